/*
 * pyflannel.backend._fastpump: the udp backend's packet loop in C (the fast twin of backend/udp_pump.py: UdpPump).
 *
 * Same wire format and behaviour as the pure-Python pump (docs/compatibility.md#udp): one raw IPv4
 * packet per UDP datagram, TTL decremented (RFC 1624 incremental checksum, flannel's carry quirk)
 * on egress and on ingress, ICMP net-unreachable back into the TUN when no peer owns the
 * destination, longest-prefix match, ingress source check, the same drop counters.
 *
 * What makes it fast (docs/performance.md#udp-pump): no interpreter per packet, and fewer kernel crossings.
 *  - pthreads that never take the GIL: one serving both directions (the default on small machines,
 *    where it measured faster: no wake-up per batch of ACKs), or one per direction (split=True).
 *  - TUN read in bursts (until EAGAIN or BURST), then one sendmmsg() for the whole burst; runs of
 *    equal-size packets to one peer go as one UDP GSO message (UDP_SEGMENT): the kernel still puts
 *    one datagram per packet on the wire.
 *  - recvmmsg() in bursts with UDP_GRO on: one receive may carry many datagrams of one size, split
 *    again here at the size the kernel reports.
 *  - GSO falls back to one send per packet if the kernel refuses it.
 *  - TUN offloads (vnet_hdr=True: flannel0 opened with IFF_VNET_HDR and TUNSETOFFLOAD CSUM|TSO4, see
 *    kernel/tun.py): one TUN read may return a 64 KiB TCP super-packet and/or a packet whose checksum
 *    is only partial; it is cut here into MTU-sized IPv4 packets with full checksums (_offload.c), each
 *    goes through the same per-packet decisions, and the segments of one super-packet leave as one
 *    UDP GSO message. The other way, in-order TCP segments of one flow from one receive burst are
 *    checked one by one (source, TTL, checksums) and then written as one TSO super-packet.
 *    The wire never changes: one whole, valid IPv4 packet of at most the MTU per datagram.
 *
 * Control from Python: set_tables() builds a complete new table and swaps a pointer; workers hold
 * a reference to the table they use for one burst (refcount taken under a mutex only when the
 * generation number changed), so an old table is freed only once no worker can read it.
 * Counters are per worker (single writer, relaxed atomics) and summed when Python reads them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "_csum.h"
#include "_offload.h"

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define TX_BURST 64           /* TUN reads per burst (one sendmmsg) */
#define RX_BURST 32           /* datagrams (or GRO trains) per recvmmsg */
#define SLOT 65600            /* every buffer holds the largest possible packet (+ virtio_net_hdr) */
#define SLOT_STRIDE (SLOT + 64) /* spread buffer starts over cache sets */
#define GSO_MAX_SEGS 64
#define GSO_MAX_BYTES 65000
#define GSO_FAIL_LIMIT 16     /* refused GSO sends before GSO is switched off for good */
#define TX_MAX_PKTS 1024      /* wire packets queued per flush (a TUN super-packet makes ~45) */
#define RUN_MAX 64            /* TCP segments coalesced into one TUN write */

/* ---- counters ------------------------------------------------------------------------------ */
enum {
    C_TX_PACKETS, C_TX_BYTES, C_TX_DROP_NO_ROUTE, C_TX_DROP_TTL, C_TX_DROP_MALFORMED,
    C_TX_DROP_SEND_ERROR, C_TX_DROP_NOT_IPV4,
    C_RX_PACKETS, C_RX_BYTES, C_RX_DROP_MALFORMED, C_RX_DROP_UNKNOWN_SOURCE, C_RX_DROP_TTL,
    C_RX_DROP_TUN_WRITE, C_RX_DROP_RECV_ERROR, C_RX_DROP_SPOOFED_SOURCE,
    C_N
};
static const char *const counter_names[C_N] = {
    "tx_packets", "tx_bytes", "tx_drop_no_route", "tx_drop_ttl", "tx_drop_malformed",
    "tx_drop_send_error", "tx_drop_not_ipv4",
    "rx_packets", "rx_bytes", "rx_drop_malformed", "rx_drop_unknown_source", "rx_drop_ttl",
    "rx_drop_tun_write", "rx_drop_recv_error", "rx_drop_spoofed_source",
};

/* diagnostics, not drop reasons: exposed by features(), not in the stats keys */
enum {
    D_TX_SENDS, D_TX_GSO_SENDS, D_TX_GSO_FALLBACKS, D_RX_RECVS, D_RX_GRO_TRAINS, D_WAKEUPS,
    D_TX_TUN_READS, D_TX_TSO_PACKETS, D_TX_TSO_SEGMENTS, D_TX_CSUM_COMPLETED, D_RX_TUN_WRITES,
    D_RX_COALESCED_WRITES, D_RX_COALESCED_SEGMENTS, D_N
};
static const char *const diag_names[D_N] = {
    "tx_sendmmsg_calls", "tx_gso_messages", "tx_gso_fallbacks", "rx_recvmmsg_calls", "rx_gro_trains",
    "wakeups", "tx_tun_reads", "tx_tso_packets", "tx_tso_segments", "tx_csum_completed", "rx_tun_writes",
    "rx_coalesced_writes", "rx_coalesced_segments",
};

/* ---- route table ----------------------------------------------------------------------------- */
typedef struct {
    uint32_t net;
    uint8_t used;
    struct sockaddr_in sa;
} rslot;

typedef struct {
    uint32_t mask;
    uint32_t cap_mask;
    rslot *slots;
} rlevel;

typedef struct {
    uint32_t ip;
    uint32_t start, count; /* range in table.src_nets */
    uint8_t used;
} sslot;

typedef struct {
    uint32_t net, mask;
} netmask;

typedef struct table {
    long refs; /* atomic */
    int nlevels;
    rlevel levels[33];
    uint32_t scap_mask;
    sslot *sslots;
    netmask *src_nets;
    size_t nroutes;
} table;

static inline uint32_t hash32(uint32_t x) { return (x * 0x9E3779B1u) ^ (x >> 16); }

static void table_free(table *t) {
    if (t == NULL) return;
    for (int i = 0; i < t->nlevels; i++) free(t->levels[i].slots);
    free(t->sslots);
    free(t->src_nets);
    free(t);
}

static inline void table_decref(table *t) {
    if (t != NULL && __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0) table_free(t);
}

static inline const rslot *table_lookup(const table *t, uint32_t addr) {
    for (int i = 0; i < t->nlevels; i++) {
        const rlevel *lv = &t->levels[i];
        uint32_t key = addr & lv->mask;
        uint32_t h = hash32(key) & lv->cap_mask;
        for (;;) {
            const rslot *s = &lv->slots[h];
            if (!s->used) break;
            if (s->net == key) return s;
            h = (h + 1) & lv->cap_mask;
        }
    }
    return NULL;
}

/* the ingress source check: a peer's PublicIP as outer source, an inner source in its subnets */
enum { SRC_OK, SRC_UNKNOWN_PEER, SRC_OUTSIDE_SUBNET };

static inline int table_source(const table *t, uint32_t outer, uint32_t inner) {
    if (t->sslots == NULL) return SRC_UNKNOWN_PEER;
    uint32_t h = hash32(outer) & t->scap_mask;
    for (;;) {
        const sslot *s = &t->sslots[h];
        if (!s->used) return SRC_UNKNOWN_PEER;
        if (s->ip == outer) {
            for (uint32_t i = 0; i < s->count; i++) {
                const netmask *nm = &t->src_nets[s->start + i];
                if ((inner & nm->mask) == nm->net) return SRC_OK;
            }
            return SRC_OUTSIDE_SUBNET;
        }
        h = (h + 1) & t->scap_mask;
    }
}

static inline uint32_t mask_of(int plen) { return plen == 0 ? 0 : (uint32_t)(0xFFFFFFFFu << (32 - plen)); }

static uint32_t pow2_at_least(size_t n) {
    uint32_t c = 4;
    while (c < n * 2) c <<= 1;
    return c;
}

typedef struct { uint32_t net; int plen; uint32_t ip; uint16_t port; } route_in;
typedef struct { uint32_t ip, net, mask; } source_in;

static int cmp_source(const void *a, const void *b) {
    const source_in *x = a, *y = b;
    if (x->ip != y->ip) return x->ip < y->ip ? -1 : 1;
    if (x->net != y->net) return x->net < y->net ? -1 : 1;
    return x->mask < y->mask ? -1 : (x->mask > y->mask);
}

/* Builds a table; NULL on allocation failure. Routes later in the list win for a repeated net. */
static table *table_build(const route_in *routes, size_t nr, source_in *sources, size_t ns) {
    table *t = calloc(1, sizeof(table));
    if (t == NULL) return NULL;
    t->refs = 1;
    t->nroutes = nr;
    size_t per_len[33] = {0};
    for (size_t i = 0; i < nr; i++) per_len[routes[i].plen]++;
    for (int plen = 32; plen >= 0; plen--) {
        if (per_len[plen] == 0) continue;
        rlevel *lv = &t->levels[t->nlevels++];
        lv->mask = mask_of(plen);
        uint32_t cap = pow2_at_least(per_len[plen]);
        lv->cap_mask = cap - 1;
        lv->slots = calloc(cap, sizeof(rslot));
        if (lv->slots == NULL) goto fail;
        for (size_t i = 0; i < nr; i++) {
            if (routes[i].plen != plen) continue;
            uint32_t key = routes[i].net & lv->mask;
            uint32_t h = hash32(key) & lv->cap_mask;
            while (lv->slots[h].used && lv->slots[h].net != key) h = (h + 1) & lv->cap_mask;
            rslot *s = &lv->slots[h];
            s->used = 1;
            s->net = key;
            memset(&s->sa, 0, sizeof(s->sa));
            s->sa.sin_family = AF_INET;
            s->sa.sin_port = htons(routes[i].port);
            s->sa.sin_addr.s_addr = htonl(routes[i].ip);
        }
    }
    if (ns > 0) {
        qsort(sources, ns, sizeof(source_in), cmp_source);
        t->src_nets = malloc(ns * sizeof(netmask));
        size_t npeers = 0;
        for (size_t i = 0; i < ns; i++)
            if (i == 0 || sources[i].ip != sources[i - 1].ip) npeers++;
        uint32_t cap = pow2_at_least(npeers);
        t->scap_mask = cap - 1;
        t->sslots = calloc(cap, sizeof(sslot));
        if (t->src_nets == NULL || t->sslots == NULL) goto fail;
        size_t i = 0;
        while (i < ns) {
            size_t j = i;
            uint32_t h = hash32(sources[i].ip) & t->scap_mask;
            while (t->sslots[h].used) h = (h + 1) & t->scap_mask;
            sslot *s = &t->sslots[h];
            s->used = 1;
            s->ip = sources[i].ip;
            s->start = (uint32_t)i;
            while (j < ns && sources[j].ip == sources[i].ip) {
                t->src_nets[j].net = sources[j].net & sources[j].mask;
                t->src_nets[j].mask = sources[j].mask;
                j++;
            }
            s->count = (uint32_t)(j - i);
            i = j;
        }
    }
    return t;
fail:
    table_free(t);
    return NULL;
}

/* ---- packets (mirrors pyflannel.core.packet) ------------------------------------------------- */
static inline uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline int valid_ipv4(const uint8_t *b, size_t n) {
    if (n < 20) return 0;
    unsigned ihl = b[0] & 0xF;
    return (b[0] >> 4) == 4 && ihl >= 5 && n >= ihl * 4u;
}

static inline int decrement_ttl(uint8_t *b) {
    uint8_t ttl = b[8];
    if (ttl <= 1) return 0;
    b[8] = ttl - 1;
    uint32_t c = ((uint32_t)b[10] << 8 | b[11]) + 0x100;
    if (c > 0xFFFF)
        c -= 0xFFFF;
    else if (c == 0xFFFF)
        c = 0;
    b[10] = (uint8_t)(c >> 8);
    b[11] = (uint8_t)c;
    return 1;
}

static inline int unicast_host(uint32_t a) {
    uint32_t top = a >> 24;
    return top != 0 && top != 127 && (a & 0xF0000000u) != 0xE0000000u && a != 0xFFFFFFFFu;
}

static inline int icmp_query_type(uint8_t t) {
    return t == 0 || t == 8 || (t >= 13 && t <= 18);
}

/* ICMP net-unreachable about `off` into `out` (>= 96 bytes); returns its length or 0 for none. */
static size_t icmp_net_unreachable(const uint8_t *off, size_t n, uint32_t src_ip, uint8_t *out) {
    if (!valid_ipv4(off, n)) return 0;
    if ((((unsigned)off[6] << 8 | off[7]) & 0x1FFF) != 0) return 0;
    size_t ihl = (size_t)(off[0] & 0xF) << 2;
    if (off[9] == 1 && (n <= ihl || !icmp_query_type(off[ihl]))) return 0;
    uint32_t osrc = be32(off + 12), odst = be32(off + 16);
    if (!unicast_host(osrc) || odst == 0xFFFFFFFFu || (odst & 0xF0000000u) == 0xE0000000u) return 0;
    size_t q = n < ihl + 8 ? n : ihl + 8;
    uint8_t *icmp = out + 20;
    memset(icmp, 0, 8);
    icmp[0] = 3; /* destination unreachable */
    icmp[1] = 0; /* net unreachable */
    memcpy(icmp + 8, off, q);
    uint16_t ic = csum_inet(icmp, 8 + q);
    memcpy(icmp + 2, &ic, 2);
    size_t total = 20 + 8 + q;
    uint8_t *ip = out;
    memset(ip, 0, 20);
    ip[0] = 0x45;
    ip[2] = (uint8_t)(total >> 8);
    ip[3] = (uint8_t)total;
    ip[8] = 8; /* flannel's TTL */
    ip[9] = 1;
    ip[12] = src_ip >> 24; ip[13] = src_ip >> 16; ip[14] = src_ip >> 8; ip[15] = src_ip;
    ip[16] = osrc >> 24; ip[17] = osrc >> 16; ip[18] = osrc >> 8; ip[19] = osrc;
    uint16_t hc = csum_inet(ip, 20);
    memcpy(ip + 10, &hc, 2);
    return total;
}

/* ---- pump object ------------------------------------------------------------------------------ */
struct Pump;

/* one wire packet waiting for sendmmsg: a whole packet read from the TUN (pay == NULL), or a
 * segment of a super-packet: its own headers (in seghdr) + a slice of the super-packet's payload */
typedef struct {
    uint8_t *hdr;
    const uint8_t *pay;
    uint32_t hlen, plen;
    const rslot *dst;
} txpkt;

/* a run of TCP segments of one flow being coalesced (UDP -> TUN, vnet_hdr only) */
typedef struct {
    int nseg;          /* 0: no run */
    uint8_t *head;     /* the first segment, whole; its headers become the super-packet's */
    tcp_seg hs;
    uint32_t head_len, gso, total, next_seq;
    int head_ok;       /* head's checksums: -1 not checked yet, 0 bad, 1 good */
    int psh;
    uint64_t bytes;    /* wire bytes of all segments (rx_bytes) */
    uint8_t vh[VNET_HDR_LEN];
    struct iovec iov[RUN_MAX + 2]; /* [virtio_net_hdr][head][payload 2]...[payload n] */
} gro_run;

typedef struct worker {
    uint64_t cnt[C_N];
    uint64_t diag[D_N];
    struct Pump *p;
    pthread_t th;
    int started, do_tx, do_rx;
    table *t;
    uint64_t gen;
    /* tx */
    uint8_t *txbuf;   /* TX_BURST read slots */
    uint8_t *seghdr;  /* TX_MAX_PKTS segment headers of SEG_HDR_MAX bytes (vnet_hdr only) */
    int ntx;
    txpkt tx[TX_MAX_PKTS];
    struct iovec tx_iov[2 * TX_MAX_PKTS];
    struct mmsghdr tx_msg[TX_MAX_PKTS];
    int tx_first[TX_MAX_PKTS], tx_cnt[TX_MAX_PKTS];
    union { char buf[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } tx_ctl[TX_MAX_PKTS];
    /* rx */
    uint8_t *rxbuf;
    struct iovec rx_iov[RX_BURST];
    struct mmsghdr rx_msg[RX_BURST];
    struct sockaddr_in rx_name[RX_BURST];
    union { char buf[CMSG_SPACE(sizeof(int)) * 2]; struct cmsghdr align; } rx_ctl[RX_BURST];
    gro_run gro;
    uint8_t icmp[128];
} worker;

typedef struct Pump {
    PyObject_HEAD
    int tun_fd, udp_fd, stop_fd;
    uint32_t local_ip;
    uint32_t mtu;
    int want_gso, want_gro, split;
    int vnet;           /* the TUN fd carries a virtio_net_hdr before every packet (offloads on) */
    int spin_us;
    int gso_on, gro_on; /* atomic */
    int gso_failures;   /* atomic */
    pthread_mutex_t tlock;
    table *cur;
    uint64_t gen; /* atomic */
    int started, stopped;
    int stopping, dead; /* atomic */
    char err[256];
    int nworkers;
    worker *w[2];
} Pump;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define CNT(w, k, v) STORE((w)->cnt[k], (w)->cnt[k] + (v))
#define DIAG(w, k, v) STORE((w)->diag[k], (w)->diag[k] + (v))

static void pump_fail(Pump *p, const char *what, int err) {
    int expected = 0;
    if (__atomic_compare_exchange_n(&p->dead, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        snprintf(p->err, sizeof(p->err), "%s: %s", what, strerror(err));
    STORE(p->stopping, 1);
    uint64_t one = 1;
    ssize_t r = write(p->stop_fd, &one, sizeof(one));
    (void)r;
}

static inline void refresh_table(worker *w) {
    Pump *p = w->p;
    uint64_t g = __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE);
    if (g == w->gen) return;
    pthread_mutex_lock(&p->tlock);
    table *nt = p->cur;
    __atomic_add_fetch(&nt->refs, 1, __ATOMIC_ACQ_REL);
    w->gen = p->gen;
    pthread_mutex_unlock(&p->tlock);
    table_decref(w->t);
    w->t = nt;
}

static int wait_fd(int fd, short ev, int ms) {
    struct pollfd pfd = {.fd = fd, .events = ev};
    return poll(&pfd, 1, ms);
}

static const uint8_t zero_vnet[VNET_HDR_LEN]; /* a plain packet: no GSO, checksum complete */

/* write one packet (iov[0..cnt)) into the TUN; 1 on success, else `npkts` counted as dropped */
static int tun_writev(worker *w, const struct iovec *iov, int cnt, uint64_t npkts) {
    int tries = 0;
    DIAG(w, D_RX_TUN_WRITES, 1);
    for (;;) {
        ssize_t r = writev(w->p->tun_fd, iov, cnt);
        if (r >= 0) return 1;
        if (errno == EINTR) continue;
        if ((errno == EAGAIN || errno == EWOULDBLOCK) && tries++ < 2) {
            wait_fd(w->p->tun_fd, POLLOUT, 1);
            continue;
        }
        CNT(w, C_RX_DROP_TUN_WRITE, npkts);
        return 0;
    }
}

/* write one plain packet into the TUN (behind a zeroed virtio_net_hdr when the TUN wants one) */
static int tun_write(worker *w, const uint8_t *b, size_t n) {
    struct iovec iov[2] = {{(void *)zero_vnet, VNET_HDR_LEN}, {(void *)b, n}};
    return w->p->vnet ? tun_writev(w, iov, 2, 1) : tun_writev(w, iov + 1, 1, 1);
}

/* ---- TUN -> UDP ------------------------------------------------------------------------------ */
static inline uint32_t tx_len(const txpkt *t) { return t->hlen + t->plen; }

/* the iovecs of queued packet i; returns how many (1 or 2) */
static inline size_t tx_iovs(worker *w, int i, struct iovec *iov) {
    const txpkt *t = &w->tx[i];
    iov[0].iov_base = t->hdr;
    iov[0].iov_len = t->hlen;
    if (t->pay == NULL || t->plen == 0) return 1;
    iov[1].iov_base = (void *)t->pay;
    iov[1].iov_len = t->plen;
    return 2;
}

static void tx_send_single(worker *w, int i) {
    int tries = 0;
    struct iovec iov[2];
    struct msghdr mh = {0};
    mh.msg_name = (void *)&w->tx[i].dst->sa;
    mh.msg_namelen = sizeof(struct sockaddr_in);
    mh.msg_iov = iov;
    mh.msg_iovlen = tx_iovs(w, i, iov);
    for (;;) {
        ssize_t r = sendmsg(w->p->udp_fd, &mh, 0);
        if (r >= 0) {
            CNT(w, C_TX_PACKETS, 1);
            CNT(w, C_TX_BYTES, tx_len(&w->tx[i]));
            return;
        }
        if (errno == EINTR) continue;
        if ((errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) && tries++ < 2) {
            wait_fd(w->p->udp_fd, POLLOUT, 5);
            continue;
        }
        CNT(w, C_TX_DROP_SEND_ERROR, 1);
        return;
    }
}

static inline int same_peer(const rslot *a, const rslot *b) {
    return a == b || (a->sa.sin_addr.s_addr == b->sa.sin_addr.s_addr && a->sa.sin_port == b->sa.sin_port);
}

/* send every queued packet: runs of equal-size packets to one peer (a shorter one may end a run)
 * as one UDP GSO message each, all messages in one sendmmsg */
static void tx_flush(worker *w) {
    Pump *p = w->p;
    int gso = LOAD(p->gso_on);
    int n = w->ntx;
    int m = 0, i = 0;
    size_t v = 0;
    w->ntx = 0;
    while (i < n) {
        uint32_t seg = tx_len(&w->tx[i]);
        const rslot *d = w->tx[i].dst;
        int j = i + 1;
        if (gso && seg <= p->mtu) {
            size_t total = seg;
            while (j < n && j - i < GSO_MAX_SEGS && same_peer(w->tx[j].dst, d) &&
                   total + tx_len(&w->tx[j]) <= GSO_MAX_BYTES) {
                uint32_t l = tx_len(&w->tx[j]);
                if (l > seg) break;
                total += l;
                j++;
                if (l < seg) break; /* a shorter packet ends a GSO train */
            }
        }
        size_t v0 = v;
        for (int k = i; k < j; k++) v += tx_iovs(w, k, &w->tx_iov[v]);
        struct msghdr *mh = &w->tx_msg[m].msg_hdr;
        memset(mh, 0, sizeof(*mh));
        mh->msg_name = (void *)&d->sa;
        mh->msg_namelen = sizeof(struct sockaddr_in);
        mh->msg_iov = &w->tx_iov[v0];
        mh->msg_iovlen = v - v0;
        if (j - i > 1) {
            mh->msg_control = w->tx_ctl[m].buf;
            mh->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
            struct cmsghdr *cm = CMSG_FIRSTHDR(mh);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t gs = (uint16_t)seg;
            memcpy(CMSG_DATA(cm), &gs, sizeof(gs));
        }
        w->tx_first[m] = i;
        w->tx_cnt[m] = j - i;
        m++;
        i = j;
    }
    int k = 0, tries = 0;
    while (k < m) {
        DIAG(w, D_TX_SENDS, 1);
        int r = sendmmsg(p->udp_fd, &w->tx_msg[k], (unsigned)(m - k), 0);
        if (r > 0) {
            for (int q = k; q < k + r; q++) {
                uint64_t bytes = 0;
                for (int x = w->tx_first[q]; x < w->tx_first[q] + w->tx_cnt[q]; x++) bytes += tx_len(&w->tx[x]);
                CNT(w, C_TX_PACKETS, (uint64_t)w->tx_cnt[q]);
                CNT(w, C_TX_BYTES, bytes);
                if (w->tx_cnt[q] > 1) DIAG(w, D_TX_GSO_SENDS, 1);
            }
            k += r;
            continue;
        }
        int e = errno;
        if (e == EINTR) continue;
        if ((e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) && tries++ < 2) {
            wait_fd(p->udp_fd, POLLOUT, 5);
            continue;
        }
        /* message k failed: as single datagrams (a refused GSO train) or counted as lost */
        if (w->tx_cnt[k] > 1) {
            DIAG(w, D_TX_GSO_FALLBACKS, 1);
            if (__atomic_add_fetch(&p->gso_failures, 1, __ATOMIC_RELAXED) >= GSO_FAIL_LIMIT ||
                e == EOPNOTSUPP || e == ENOPROTOOPT)
                STORE(p->gso_on, 0);
            for (int x = w->tx_first[k]; x < w->tx_first[k] + w->tx_cnt[k]; x++) tx_send_single(w, x);
        } else {
            CNT(w, C_TX_DROP_SEND_ERROR, 1);
        }
        k++;
    }
}

/* The per-packet decisions for one wire packet (headers in b[0..hlen), payload pay[0..plen) or
 * none): validate, look up, ICMP net-unreachable, TTL; then queue it for tx_flush. */
static void tx_packet(worker *w, uint8_t *b, uint32_t hlen, const uint8_t *pay, uint32_t plen) {
    Pump *p = w->p;
    if (!valid_ipv4(b, hlen)) {
        /* IPv6 (or anything not IPv4) is a whole packet we do not carry, not a broken one */
        CNT(w, hlen && (b[0] >> 4) != 4 ? C_TX_DROP_NOT_IPV4 : C_TX_DROP_MALFORMED, 1);
        return;
    }
    const rslot *rt = table_lookup(w->t, be32(b + 16));
    if (rt == NULL) {
        CNT(w, C_TX_DROP_NO_ROUTE, 1);
        /* quotes the IP header + 8 bytes: a segment's own headers hold them */
        size_t il = icmp_net_unreachable(b, hlen, p->local_ip, w->icmp);
        if (il) tun_write(w, w->icmp, il);
        return;
    }
    if (!decrement_ttl(b)) {
        CNT(w, C_TX_DROP_TTL, 1);
        return;
    }
    if (w->ntx == TX_MAX_PKTS) tx_flush(w);
    w->tx[w->ntx++] = (txpkt){b, pay, hlen, plen, rt};
}

/* One read of a TUN with virtio_net_hdr: complete a partial checksum, cut a TCP super-packet into
 * segments (each with its own headers in seghdr, payload left in place), decide each one. */
static void tx_offloaded(worker *w, uint8_t *b, size_t n) {
    Pump *p = w->p;
    if (n < VNET_HDR_LEN) {
        CNT(w, C_TX_DROP_MALFORMED, 1);
        return;
    }
    vnet_hdr vh;
    vnet_hdr_read(b, &vh);
    uint8_t *pkt = b + VNET_HDR_LEN;
    size_t len = n - VNET_HDR_LEN;
    if (len && (pkt[0] >> 4) != 4) { /* before its checksum or segments are looked at */
        CNT(w, C_TX_DROP_NOT_IPV4, 1);
        return;
    }
    uint8_t gso_type = vh.gso_type & (uint8_t)~VNET_GSO_ECN;
    if (gso_type == VNET_GSO_NONE) {
        if (vh.flags & VNET_F_NEEDS_CSUM) {
            if (!csum_complete(pkt, len, vh.csum_start, vh.csum_offset)) {
                CNT(w, C_TX_DROP_MALFORMED, 1);
                return;
            }
            DIAG(w, D_TX_CSUM_COMPLETED, 1);
        }
        tx_packet(w, pkt, (uint32_t)len, NULL, 0);
        return;
    }
    tso_plan plan;
    if (gso_type != VNET_GSO_TCPV4 || !tso4_plan(pkt, len, vh.gso_size, p->mtu, &plan)) {
        CNT(w, C_TX_DROP_MALFORMED, 1); /* we offered TSO4 only; anything else is not for us */
        return;
    }
    DIAG(w, D_TX_TSO_PACKETS, 1);
    DIAG(w, D_TX_TSO_SEGMENTS, plan.nsegs);
    for (uint32_t i = 0; i < plan.nsegs; i++) {
        if (w->ntx == TX_MAX_PKTS) tx_flush(w); /* the queued ones still point into intact buffers */
        uint8_t *h = w->seghdr + (size_t)w->ntx * SEG_HDR_MAX;
        uint32_t plen;
        const uint8_t *pay = tso4_segment(pkt, &plan, i, h, &plen);
        tx_packet(w, h, plan.hlen, pay, plen);
    }
}

/* one burst TUN -> UDP; 1 when more may be waiting, 0 when drained, -1 fatal */
static int tx_burst(worker *w) {
    Pump *p = w->p;
    refresh_table(w);
    int drained = 0;
    for (int it = 0; it < TX_BURST; it++) {
        uint8_t *b = w->txbuf + (size_t)it * SLOT_STRIDE; /* every read keeps its slot until the flush */
        ssize_t r = read(p->tun_fd, b, SLOT);
        if (r < 0) {
            if (errno == EINTR) { it--; continue; }
            if (errno == EAGAIN || errno == EWOULDBLOCK) { drained = 1; break; }
            int e = errno;
            if (w->ntx) tx_flush(w);
            pump_fail(p, "reading the TUN", e);
            return -1;
        }
        DIAG(w, D_TX_TUN_READS, 1);
        if (p->vnet)
            tx_offloaded(w, b, (size_t)r);
        else
            tx_packet(w, b, (uint32_t)r, NULL, 0);
    }
    if (w->ntx) tx_flush(w);
    return drained ? 0 : 1;
}

/* ---- UDP -> TUN ------------------------------------------------------------------------------ */
static void rx_plain(worker *w, const uint8_t *b, size_t n) {
    if (tun_write(w, b, n)) {
        CNT(w, C_RX_PACKETS, 1);
        CNT(w, C_RX_BYTES, n);
    }
}

/* write the pending run: alone as a plain packet, or as one TSO super-packet that the kernel
 * treats as the segments it stands for (gso_size = the first segment's payload) */
static void gro_flush(worker *w) {
    gro_run *g = &w->gro;
    int nseg = g->nseg;
    if (nseg == 0) return;
    g->nseg = 0;
    if (nseg == 1) {
        rx_plain(w, g->head, g->head_len);
        return;
    }
    gro_finish_head(g->head, g->total, g->psh);
    vnet_hdr vh = {
        .flags = VNET_F_NEEDS_CSUM, .gso_type = VNET_GSO_TCPV4, .hdr_len = (uint16_t)(20 + g->hs.thl),
        .gso_size = (uint16_t)g->gso, .csum_start = 20, .csum_offset = 16,
    };
    vnet_hdr_write(g->vh, &vh);
    g->iov[0] = (struct iovec){g->vh, VNET_HDR_LEN};
    g->iov[1] = (struct iovec){g->head, g->head_len};
    if (tun_writev(w, g->iov, nseg + 1, (uint64_t)nseg)) {
        CNT(w, C_RX_PACKETS, (uint64_t)nseg);
        CNT(w, C_RX_BYTES, g->bytes);
        DIAG(w, D_RX_COALESCED_WRITES, 1);
        DIAG(w, D_RX_COALESCED_SEGMENTS, (uint64_t)nseg);
    }
}

static void gro_start(worker *w, uint8_t *b, size_t n, const tcp_seg *s) {
    gro_run *g = &w->gro;
    if (s->flags & TCP_PSH) { /* PSH ends a run: nothing can follow it */
        rx_plain(w, b, n);
        return;
    }
    g->nseg = 1;
    g->head = b;
    g->hs = *s;
    g->head_len = (uint32_t)n;
    g->gso = s->plen;
    g->total = (uint32_t)n;
    g->next_seq = s->seq + s->plen;
    g->head_ok = -1;
    g->psh = 0;
    g->bytes = n;
}

/* a packet that passed every check, into the TUN: coalesced with the pending run when it is the
 * next in-order segment of the same flow, else written on its own (after the pending run) */
static void rx_deliver(worker *w, uint8_t *b, size_t n) {
    if (!w->p->vnet) {
        rx_plain(w, b, n);
        return;
    }
    gro_run *g = &w->gro;
    tcp_seg s;
    if (!gro_candidate(b, n, &s)) {
        gro_flush(w);
        rx_plain(w, b, n);
        return;
    }
    if (g->nseg && s.seq == g->next_seq && s.plen <= g->gso && g->total + s.plen <= 65535 &&
        gro_same_flow(g->head, &g->hs, b, &s)) {
        /* the kernel recomputes the checksum of a super-packet: verify what it stands for first */
        if (g->head_ok < 0) g->head_ok = tcp4_csum_ok(g->head, g->head_len);
        if (!g->head_ok) { /* a corrupt head goes alone (the kernel drops it); b starts over */
            gro_flush(w);
            gro_start(w, b, n, &s);
            return;
        }
        if (!tcp4_csum_ok(b, n)) {
            gro_flush(w);
            rx_plain(w, b, n);
            return;
        }
        g->iov[g->nseg + 1] = (struct iovec){b + 20 + s.thl, s.plen};
        g->nseg++;
        g->total += s.plen;
        g->next_seq += s.plen;
        g->bytes += n;
        if (s.flags & TCP_PSH) g->psh = 1;
        if (g->psh || s.plen < g->gso || g->nseg == RUN_MAX) gro_flush(w);
        return;
    }
    gro_flush(w);
    gro_start(w, b, n, &s);
}

static inline void rx_one(worker *w, uint8_t *b, size_t n, uint32_t outer) {
    if (!valid_ipv4(b, n)) {
        CNT(w, C_RX_DROP_MALFORMED, 1);
        return;
    }
    int src = table_source(w->t, outer, be32(b + 12));
    if (src != SRC_OK) {
        CNT(w, src == SRC_UNKNOWN_PEER ? C_RX_DROP_UNKNOWN_SOURCE : C_RX_DROP_SPOOFED_SOURCE, 1);
        return;
    }
    if (!decrement_ttl(b)) {
        CNT(w, C_RX_DROP_TTL, 1);
        return;
    }
    rx_deliver(w, b, n);
}

static int rx_burst(worker *w) {
    Pump *p = w->p;
    refresh_table(w);
    for (int k = 0; k < RX_BURST; k++) {
        struct msghdr *mh = &w->rx_msg[k].msg_hdr;
        w->rx_iov[k].iov_base = w->rxbuf + (size_t)k * SLOT_STRIDE;
        w->rx_iov[k].iov_len = SLOT;
        mh->msg_name = &w->rx_name[k];
        mh->msg_namelen = sizeof(struct sockaddr_in);
        mh->msg_iov = &w->rx_iov[k];
        mh->msg_iovlen = 1;
        mh->msg_control = w->rx_ctl[k].buf;
        mh->msg_controllen = sizeof(w->rx_ctl[k].buf);
        mh->msg_flags = 0;
    }
    DIAG(w, D_RX_RECVS, 1);
    int r = recvmmsg(p->udp_fd, w->rx_msg, RX_BURST, MSG_DONTWAIT, NULL);
    if (r < 0) {
        if (errno == EINTR) return 1;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        CNT(w, C_RX_DROP_RECV_ERROR, 1);
        return 0;
    }
    for (int k = 0; k < r; k++) {
        struct msghdr *mh = &w->rx_msg[k].msg_hdr;
        size_t len = w->rx_msg[k].msg_len;
        uint8_t *b = w->rxbuf + (size_t)k * SLOT_STRIDE;
        uint32_t outer = mh->msg_namelen >= sizeof(struct sockaddr_in) && w->rx_name[k].sin_family == AF_INET
                             ? ntohl(w->rx_name[k].sin_addr.s_addr) : 0;
        size_t seg = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm != NULL; cm = CMSG_NXTHDR(mh, cm)) {
            if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                int gs;
                memcpy(&gs, CMSG_DATA(cm), sizeof(gs));
                if (gs > 0) seg = (size_t)gs;
            }
        }
        if (len > SLOT) len = SLOT;
        if (seg == 0 || seg >= len) {
            if (mh->msg_flags & MSG_TRUNC) {
                CNT(w, C_RX_DROP_MALFORMED, 1);
                continue;
            }
            rx_one(w, b, len, outer);
            continue;
        }
        DIAG(w, D_RX_GRO_TRAINS, 1);
        for (size_t off = 0; off < len; off += seg) {
            size_t l = len - off < seg ? len - off : seg;
            if ((mh->msg_flags & MSG_TRUNC) && off + seg > len) {
                CNT(w, C_RX_DROP_MALFORMED, 1); /* the cut-off end of a train */
                break;
            }
            rx_one(w, b + off, l, outer);
        }
    }
    gro_flush(w); /* a run points into rxbuf, which the next recvmmsg overwrites */
    return r == RX_BURST;
}

/* ---- worker thread ---------------------------------------------------------------------------- */
static inline uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    Pump *p = w->p;
    struct pollfd pfd[3];
    int nfd = 0;
    pfd[nfd++] = (struct pollfd){.fd = p->stop_fd, .events = POLLIN};
    if (w->do_tx) pfd[nfd++] = (struct pollfd){.fd = p->tun_fd, .events = POLLIN};
    if (w->do_rx) pfd[nfd++] = (struct pollfd){.fd = p->udp_fd, .events = POLLIN};
    uint64_t spin_until = 0;
    while (!LOAD(p->stopping)) {
        int more = 0;
        if (w->do_tx) {
            int r = tx_burst(w);
            if (r < 0) break;
            more |= r;
        }
        if (w->do_rx) more |= rx_burst(w);
        if (more) {
            spin_until = 0;
            continue;
        }
        if (p->spin_us > 0) {
            uint64_t t = now_us();
            if (spin_until == 0) spin_until = t + (uint64_t)p->spin_us;
            if (t < spin_until) continue;
        }
        spin_until = 0;
        DIAG(w, D_WAKEUPS, 1);
        int r = poll(pfd, (nfds_t)nfd, -1);
        if (r < 0 && errno != EINTR) {
            pump_fail(p, "poll", errno);
            break;
        }
        if (r > 0 && (pfd[0].revents & POLLIN)) break;
        for (int i = 1; i < nfd; i++) {
            if (pfd[i].revents & POLLNVAL) {
                pump_fail(p, pfd[i].fd == p->tun_fd ? "TUN fd" : "UDP fd", EBADF);
                goto out;
            }
        }
    }
out:
    table_decref(w->t);
    w->t = NULL;
    w->gen = (uint64_t)-1;
    return NULL;
}

/* ---- Python type ------------------------------------------------------------------------------ */
static void pump_join(Pump *p) {
    if (!p->started || p->stopped) return;
    STORE(p->stopping, 1);
    uint64_t one = 1;
    ssize_t r = write(p->stop_fd, &one, sizeof(one));
    (void)r;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < p->nworkers; i++)
        if (p->w[i]->started) pthread_join(p->w[i]->th, NULL);
    Py_END_ALLOW_THREADS
    p->stopped = 1;
}

static void worker_free(worker *w) {
    if (w == NULL) return;
    free(w->txbuf);
    free(w->seghdr);
    free(w->rxbuf);
    table_decref(w->t);
    free(w);
}

static void Pump_dealloc(Pump *p) {
    pump_join(p);
    for (int i = 0; i < p->nworkers; i++) worker_free(p->w[i]);
    table_decref(p->cur);
    if (p->stop_fd >= 0) close(p->stop_fd);
    pthread_mutex_destroy(&p->tlock);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static worker *worker_new(Pump *p, int tx, int rx) {
    worker *w = calloc(1, sizeof(worker));
    if (w == NULL) return NULL;
    w->p = p;
    w->do_tx = tx;
    w->do_rx = rx;
    w->gen = (uint64_t)-1;
    if (tx && (w->txbuf = malloc((size_t)TX_BURST * SLOT_STRIDE)) == NULL) goto fail;
    if (tx && p->vnet && (w->seghdr = malloc((size_t)TX_MAX_PKTS * SEG_HDR_MAX)) == NULL) goto fail;
    if (rx && (w->rxbuf = malloc((size_t)RX_BURST * SLOT_STRIDE)) == NULL) goto fail;
    return w;
fail:
    worker_free(w);
    return NULL;
}

static int Pump_init(Pump *p, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"tun_fd", "udp_fd", "local_ip", "mtu", "gso", "gro", "split", "spin_us", "vnet_hdr",
                             NULL};
    int tun_fd, udp_fd, mtu, gso = 1, gro = 1, split = 1, spin_us = 0, vnet = 0;
    unsigned long local_ip;
    if (p->nworkers || p->stop_fd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "Pump already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiki|pppip", kwlist, &tun_fd, &udp_fd, &local_ip, &mtu, &gso,
                                     &gro, &split, &spin_us, &vnet))
        return -1;
    if (tun_fd < 0 || udp_fd < 0 || mtu < 68 || mtu > 65535 || local_ip > 0xFFFFFFFFul || spin_us < 0) {
        PyErr_SetString(PyExc_ValueError, "bad pump parameters");
        return -1;
    }
    p->tun_fd = tun_fd;
    p->udp_fd = udp_fd;
    p->local_ip = (uint32_t)local_ip;
    p->mtu = (uint32_t)mtu;
    p->want_gso = gso;
    p->want_gro = gro;
    p->split = split;
    p->spin_us = spin_us;
    p->vnet = vnet;
    p->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->stop_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    p->cur = table_build(NULL, 0, NULL, 0);
    if (split) {
        p->w[0] = worker_new(p, 1, 0);
        p->w[1] = worker_new(p, 0, 1);
        p->nworkers = 2;
    } else {
        p->w[0] = worker_new(p, 1, 1);
        p->nworkers = 1;
    }
    for (int i = 0; i < p->nworkers; i++) {
        if (p->w[i] == NULL || p->cur == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static PyObject *Pump_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Pump *p = (Pump *)type->tp_alloc(type, 0);
    if (p != NULL) {
        p->stop_fd = -1;
        p->tun_fd = p->udp_fd = -1;
        pthread_mutex_init(&p->tlock, NULL);
    }
    return (PyObject *)p;
}

static int get_u32(PyObject *o, uint32_t *out, const char *what) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (PyErr_Occurred()) return -1;
    if (v > 0xFFFFFFFFull) {
        PyErr_Format(PyExc_ValueError, "%s out of range", what);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static PyObject *Pump_set_tables(Pump *p, PyObject *args) {
    PyObject *routes, *sources;
    if (p->nworkers == 0) {
        PyErr_SetString(PyExc_RuntimeError, "Pump not initialised");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO", &routes, &sources)) return NULL;
    PyObject *rs = PySequence_Fast(routes, "routes must be a sequence");
    if (rs == NULL) return NULL;
    PyObject *ss = PySequence_Fast(sources, "sources must be a sequence");
    if (ss == NULL) {
        Py_DECREF(rs);
        return NULL;
    }
    Py_ssize_t nr = PySequence_Fast_GET_SIZE(rs), ns = PySequence_Fast_GET_SIZE(ss);
    route_in *rv = PyMem_Calloc((size_t)nr + 1, sizeof(route_in));
    source_in *sv = PyMem_Calloc((size_t)ns + 1, sizeof(source_in));
    table *t = NULL;
    if (rv == NULL || sv == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nr; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(rs, i);
        uint32_t net, ip, plen, port;
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 4) {
            PyErr_SetString(PyExc_TypeError, "a route is a tuple (net, prefixlen, peer_ip, port)");
            goto done;
        }
        if (get_u32(PyTuple_GET_ITEM(it, 0), &net, "net") || get_u32(PyTuple_GET_ITEM(it, 1), &plen, "prefixlen") ||
            get_u32(PyTuple_GET_ITEM(it, 2), &ip, "peer_ip") || get_u32(PyTuple_GET_ITEM(it, 3), &port, "port"))
            goto done;
        if (plen > 32 || port > 65535) {
            PyErr_SetString(PyExc_ValueError, "prefixlen must be 0..32 and port 0..65535");
            goto done;
        }
        rv[i] = (route_in){net, (int)plen, ip, (uint16_t)port};
    }
    for (Py_ssize_t i = 0; i < ns; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(ss, i);
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 3) {
            PyErr_SetString(PyExc_TypeError, "a source is a tuple (peer_ip, net, mask)");
            goto done;
        }
        if (get_u32(PyTuple_GET_ITEM(it, 0), &sv[i].ip, "peer_ip") ||
            get_u32(PyTuple_GET_ITEM(it, 1), &sv[i].net, "net") || get_u32(PyTuple_GET_ITEM(it, 2), &sv[i].mask, "mask"))
            goto done;
    }
    t = table_build(rv, (size_t)nr, sv, (size_t)ns);
    if (t == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    pthread_mutex_lock(&p->tlock);
    table *old = p->cur;
    p->cur = t;
    __atomic_add_fetch(&p->gen, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&p->tlock);
    table_decref(old);
done:
    PyMem_Free(rv);
    PyMem_Free(sv);
    Py_DECREF(rs);
    Py_DECREF(ss);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Pump_start(Pump *p, PyObject *Py_UNUSED(ignored)) {
    if (p->nworkers == 0) {
        PyErr_SetString(PyExc_RuntimeError, "Pump not initialised");
        return NULL;
    }
    if (p->started) {
        PyErr_SetString(PyExc_RuntimeError, "Pump already started");
        return NULL;
    }
    /* the loop drains each fd until EAGAIN: a blocking fd would park a worker where stop() cannot
     * reach it (the backend's fds are non-blocking already; this makes sure) */
    int fds[2] = {p->tun_fd, p->udp_fd};
    for (int i = 0; i < 2; i++) {
        int fl = fcntl(fds[i], F_GETFL);
        if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fds[i], F_SETFL, fl | O_NONBLOCK) < 0))
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    int one = 1;
    p->gso_on = 0;
    if (p->want_gso) {
        /* probe: a socket option of 0 is accepted where the kernel knows UDP_SEGMENT */
        int zero = 0;
        p->gso_on = setsockopt(p->udp_fd, SOL_UDP, UDP_SEGMENT, &zero, sizeof(zero)) == 0;
    }
    p->gro_on = p->want_gro && setsockopt(p->udp_fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* signals stay with the interpreter's threads */
    int err = 0;
    p->started = 1;
    for (int i = 0; i < p->nworkers && !err; i++) {
        err = pthread_create(&p->w[i]->th, NULL, worker_main, p->w[i]);
        if (!err) {
            p->w[i]->started = 1;
            char name[16];
            snprintf(name, sizeof(name), "udp-pump-%s", p->w[i]->do_tx && p->w[i]->do_rx ? "io" :
                     p->w[i]->do_tx ? "tx" : "rx");
            pthread_setname_np(p->w[i]->th, name);
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        pump_join(p);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Pump_stop(Pump *p, PyObject *Py_UNUSED(ignored)) {
    pump_join(p);
    Py_RETURN_NONE;
}

static PyObject *Pump_alive(Pump *p, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(p->started && !p->stopped && !LOAD(p->dead));
}

static PyObject *Pump_error(Pump *p, PyObject *Py_UNUSED(ignored)) {
    if (!__atomic_load_n(&p->dead, __ATOMIC_ACQUIRE)) Py_RETURN_NONE;
    return PyUnicode_FromString(p->err);
}

static PyObject *sum_into_dict(Pump *p, int diag) {
    PyObject *d = PyDict_New();
    if (d == NULL) return NULL;
    int n = diag ? D_N : C_N;
    for (int k = 0; k < n; k++) {
        uint64_t v = 0;
        for (int i = 0; i < p->nworkers; i++) v += diag ? LOAD(p->w[i]->diag[k]) : LOAD(p->w[i]->cnt[k]);
        PyObject *o = PyLong_FromUnsignedLongLong(v);
        if (o == NULL || PyDict_SetItemString(d, diag ? diag_names[k] : counter_names[k], o) < 0) {
            Py_XDECREF(o);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(o);
    }
    return d;
}

static PyObject *Pump_counters(Pump *p, PyObject *Py_UNUSED(ignored)) { return sum_into_dict(p, 0); }

static PyObject *Pump_features(Pump *p, PyObject *Py_UNUSED(ignored)) {
    PyObject *d = sum_into_dict(p, 1);
    if (d == NULL) return NULL;
    size_t nroutes = 0;
    pthread_mutex_lock(&p->tlock);
    if (p->cur) nroutes = p->cur->nroutes;
    pthread_mutex_unlock(&p->tlock);
    PyObject *v;
#define PUT(k, expr)                                                           \
    v = (expr);                                                                \
    if (v == NULL || PyDict_SetItemString(d, k, v) < 0) {                      \
        Py_XDECREF(v);                                                         \
        Py_DECREF(d);                                                          \
        return NULL;                                                           \
    }                                                                          \
    Py_DECREF(v);
    PUT("gso", PyBool_FromLong(LOAD(p->gso_on)));
    PUT("gro", PyBool_FromLong(p->gro_on));
    PUT("vnet_hdr", PyBool_FromLong(p->vnet));
    PUT("workers", PyLong_FromLong(p->nworkers));
    PUT("spin_us", PyLong_FromLong(p->spin_us));
    PUT("routes", PyLong_FromSize_t(nroutes));
#undef PUT
    return d;
}

static PyMethodDef Pump_methods[] = {
    {"set_tables", (PyCFunction)Pump_set_tables, METH_VARARGS,
     "set_tables(routes, sources): swap in a new table. routes: [(net, prefixlen, peer_ip, port)], "
     "sources: [(peer_ip, net, mask)], addresses as host-order ints."},
    {"start", (PyCFunction)Pump_start, METH_NOARGS, "Start the worker threads."},
    {"stop", (PyCFunction)Pump_stop, METH_NOARGS, "Stop and join the worker threads (idempotent)."},
    {"alive", (PyCFunction)Pump_alive, METH_NOARGS, "True while the workers run."},
    {"error", (PyCFunction)Pump_error, METH_NOARGS, "Why the workers died, or None."},
    {"counters", (PyCFunction)Pump_counters, METH_NOARGS, "All counters (dict name -> int)."},
    {"features", (PyCFunction)Pump_features, METH_NOARGS, "GSO/GRO state, worker count, diagnostics."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyflannel.backend._fastpump.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pump(tun_fd, udp_fd, local_ip, mtu, gso=True, gro=True, split=True, spin_us=0, vnet_hdr=False)",
    .tp_new = Pump_new,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
};

static struct PyModuleDef fastpump_module = {
    PyModuleDef_HEAD_INIT, "pyflannel.backend._fastpump", "The udp backend's packet loop in C.", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastpump(void) {
    if (PyType_Ready(&PumpType) < 0) return NULL;
    PyObject *m = PyModule_Create(&fastpump_module);
    if (m == NULL) return NULL;
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(m, "Pump", (PyObject *)&PumpType) < 0) {
        Py_DECREF(&PumpType);
        Py_DECREF(m);
        return NULL;
    }
    PyObject *names = PyTuple_New(C_N);
    if (names == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (int k = 0; k < C_N; k++) PyTuple_SET_ITEM(names, k, PyUnicode_FromString(counter_names[k]));
    if (PyModule_AddObject(m, "COUNTERS", names) < 0) {
        Py_DECREF(names);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "TX_BURST", TX_BURST);
    PyModule_AddIntConstant(m, "RX_BURST", RX_BURST);
    return m;
}
