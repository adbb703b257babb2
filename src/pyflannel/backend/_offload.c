/*
 * TUN offloads for the compiled udp pump: checksums, TCP segmentation, coalescing tests.
 * See _offload.h. What the kernel expects in a virtio_net_hdr is in include/linux/virtio_net.h
 * (virtio_net_hdr_to_skb / virtio_net_hdr_from_skb).
 */
#include "_offload.h"
#include "_csum.h"

#include <arpa/inet.h>
#include <string.h>

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

void vnet_hdr_read(const uint8_t *p, vnet_hdr *h) {
    h->flags = p[0];
    h->gso_type = p[1];
    memcpy(&h->hdr_len, p + 2, 2);
    memcpy(&h->gso_size, p + 4, 2);
    memcpy(&h->csum_start, p + 6, 2);
    memcpy(&h->csum_offset, p + 8, 2);
}

void vnet_hdr_write(uint8_t *p, const vnet_hdr *h) {
    p[0] = h->flags;
    p[1] = h->gso_type;
    memcpy(p + 2, &h->hdr_len, 2);
    memcpy(p + 4, &h->gso_size, 2);
    memcpy(p + 6, &h->csum_start, 2);
    memcpy(p + 8, &h->csum_offset, 2);
}

/* ---- checksums -------------------------------------------------------------------------------- */

uint64_t csum_pseudo4(const uint8_t *ip, uint8_t proto, uint32_t len) {
    uint32_t src, dst;
    memcpy(&src, ip + 12, 4);
    memcpy(&dst, ip + 16, 4);
    return (uint64_t)src + dst + htons(proto) + htons((uint16_t)len);
}

void ip4_set_csum(uint8_t *ip) {
    ip[10] = ip[11] = 0;
    uint16_t c = csum_inet(ip, (size_t)(ip[0] & 0xF) * 4);
    memcpy(ip + 10, &c, 2);
}

int csum_complete(uint8_t *pkt, size_t n, unsigned start, unsigned off) {
    if ((size_t)start + off + 2 > n) return 0;
    /* the field holds the pseudo-header sum already: sum everything from start, field included */
    uint16_t c = (uint16_t)~csum_fold(csum_add(pkt + start, n - start, 0));
    if (c == 0) c = 0xFFFF; /* as skb_checksum_help: 0 means "no checksum" to UDP */
    memcpy(pkt + start + off, &c, 2);
    return 1;
}

/* ---- TCP segmentation (TUN -> UDP) ------------------------------------------------------------ */

int tso4_plan(const uint8_t *pkt, size_t n, unsigned gso_size, unsigned mtu, tso_plan *plan) {
    if (n < 40 || (pkt[0] >> 4) != 4 || pkt[9] != 6) return 0;
    uint32_t ihl = (uint32_t)(pkt[0] & 0xF) * 4;
    if (ihl < 20 || (rd16(pkt + 6) & 0x3FFF) != 0 || n < ihl + 20) return 0; /* fragments can't be cut */
    uint32_t thl = (uint32_t)(pkt[ihl + 12] >> 4) * 4;
    if (thl < 20 || n < ihl + thl) return 0;
    uint32_t hlen = ihl + thl;
    uint32_t seg = gso_size;
    if (mtu > hlen && seg > mtu - hlen) seg = mtu - hlen; /* never a wire packet above the MTU */
    if (seg == 0) return 0;
    plan->ihl = ihl;
    plan->hlen = hlen;
    plan->seg = seg;
    plan->paylen = (uint32_t)n - hlen;
    plan->nsegs = plan->paylen == 0 ? 1 : (plan->paylen + seg - 1) / seg;
    plan->seq = rd32(pkt + ihl + 4);
    plan->id = rd16(pkt + 4);
    return 1;
}

const uint8_t *tso4_segment(const uint8_t *pkt, const tso_plan *plan, uint32_t i, uint8_t *out, uint32_t *plen) {
    uint32_t off = i * plan->seg;
    uint32_t len = plan->paylen - off < plan->seg ? plan->paylen - off : plan->seg;
    uint32_t thl = plan->hlen - plan->ihl;
    memcpy(out, pkt, plan->hlen);
    wr16(out + 2, (uint16_t)(plan->hlen + len));
    wr16(out + 4, (uint16_t)(plan->id + i)); /* as the kernel's TSO: consecutive IDs */
    ip4_set_csum(out);
    uint8_t *th = out + plan->ihl;
    wr32(th + 4, plan->seq + off);
    if (i + 1 < plan->nsegs) th[13] &= (uint8_t)~(TCP_FIN | TCP_PSH);
    if (i > 0) th[13] &= (uint8_t)~TCP_CWR;
    th[16] = th[17] = 0;
    const uint8_t *pay = pkt + plan->hlen + off;
    uint64_t acc = csum_pseudo4(out, 6, thl + len);
    acc = csum_add(th, thl, acc);
    acc = csum_add(pay, len, acc);
    uint16_t c = (uint16_t)~csum_fold(acc);
    memcpy(th + 16, &c, 2);
    *plen = len;
    return pay;
}

/* ---- coalescing (UDP -> TUN) ------------------------------------------------------------------ */

int gro_candidate(const uint8_t *pkt, size_t n, tcp_seg *s) {
    if (n < 41 || pkt[0] != 0x45 || pkt[9] != 6) return 0;
    if (rd16(pkt + 2) != n || (rd16(pkt + 6) & 0x3FFF) != 0) return 0;
    uint32_t thl = (uint32_t)(pkt[32] >> 4) * 4;
    if (thl < 20 || 20 + thl >= n) return 0; /* no payload: nothing to gain */
    uint8_t flags = pkt[33];
    if (!(flags & TCP_ACK) || (flags & (uint8_t)~(TCP_ACK | TCP_PSH))) return 0;
    s->thl = thl;
    s->plen = (uint32_t)n - 20 - thl;
    s->seq = rd32(pkt + 24);
    s->flags = flags;
    return 1;
}

int gro_same_flow(const uint8_t *head, const tcp_seg *hs, const uint8_t *b, const tcp_seg *bs) {
    return memcmp(head + 12, b + 12, 8) == 0       /* addresses */
           && head[1] == b[1] && head[8] == b[8]    /* TOS, TTL */
           && (head[6] & 0x40) == (b[6] & 0x40)     /* DF */
           && memcmp(head + 20, b + 20, 4) == 0     /* ports */
           && memcmp(head + 28, b + 28, 4) == 0     /* ACK number */
           && hs->thl == bs->thl
           && (hs->flags & (uint8_t)~TCP_PSH) == (bs->flags & (uint8_t)~TCP_PSH)
           && memcmp(head + 34, b + 34, 2) == 0     /* window */
           && memcmp(head + 40, b + 40, hs->thl - 20) == 0; /* options (timestamps) */
}

int tcp4_csum_ok(const uint8_t *pkt, size_t n) {
    if (csum_fold(csum_add(pkt, 20, 0)) != 0xFFFF) return 0;
    return csum_fold(csum_add(pkt + 20, n - 20, csum_pseudo4(pkt, 6, (uint32_t)n - 20))) == 0xFFFF;
}

void gro_finish_head(uint8_t *head, uint32_t total, int psh) {
    wr16(head + 2, (uint16_t)total);
    ip4_set_csum(head);
    if (psh) head[33] |= TCP_PSH;
    uint16_t c = csum_fold(csum_pseudo4(head, 6, total - 20)); /* not inverted: CHECKSUM_PARTIAL */
    memcpy(head + 36, &c, 2);
}
