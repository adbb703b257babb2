/*
 * TUN offloads for the compiled udp pump (_fastpump.c): the virtio_net_hdr that a TUN opened with
 * IFF_VNET_HDR puts before every packet, checksums, TCP segmentation (TSO super-packet -> wire
 * packets) and the tests for coalescing wire packets back into one super-packet (GRO-like).
 *
 * Pure functions on byte buffers; no pump state. Checksums use _csum.h (host-order sums stored
 * with memcpy, right on any host).
 */
#ifndef PYFLANNEL_OFFLOAD_H
#define PYFLANNEL_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

/* struct virtio_net_hdr (linux/virtio_net.h), in host byte order (the TUN default on x86/arm). */
typedef struct {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
} vnet_hdr;

#define VNET_HDR_LEN 10
#define VNET_F_NEEDS_CSUM 1
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1
#define VNET_GSO_ECN 0x80

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20
#define TCP_ECE 0x40
#define TCP_CWR 0x80

#define SEG_HDR_MAX 128 /* IPv4 header (<= 60) + TCP header (<= 60), rounded up */

void vnet_hdr_read(const uint8_t *p, vnet_hdr *h);
void vnet_hdr_write(uint8_t *p, const vnet_hdr *h);

/* the ones'-complement sum and fold themselves (csum_add, csum_fold, csum_inet) are in _csum.h */
/* the IPv4 pseudo-header (addresses from the IP header `ip`) of a `len`-byte `proto` segment */
uint64_t csum_pseudo4(const uint8_t *ip, uint8_t proto, uint32_t len);
/* a fresh IPv4 header checksum */
void ip4_set_csum(uint8_t *ip);

/* NEEDS_CSUM: finish the partial checksum the kernel left at start+off (it covers start..n); 0 when
 * start/off do not fit in the packet */
int csum_complete(uint8_t *pkt, size_t n, unsigned start, unsigned off);

/* How a TCP/IPv4 super-packet splits: header length (IP + TCP), payload per segment, segments. */
typedef struct {
    uint32_t hlen, ihl, seg, nsegs, paylen;
    uint32_t seq;
    uint16_t id;
} tso_plan;

/* 1 when `pkt` (n bytes) is a TCP/IPv4 packet that can be cut into segments of at most gso_size
 * payload bytes and at most mtu bytes each (whichever is smaller) */
int tso4_plan(const uint8_t *pkt, size_t n, unsigned gso_size, unsigned mtu, tso_plan *plan);
/* write segment i's headers into out (plan->hlen bytes): IP id/length/checksum, TCP seq, flags
 * (FIN/PSH on the last only, CWR on the first only) and the full TCP checksum; returns where its
 * payload starts in pkt and sets *plen to its length */
const uint8_t *tso4_segment(const uint8_t *pkt, const tso_plan *plan, uint32_t i, uint8_t *out, uint32_t *plen);

/* Coalescing (UDP -> TUN). A packet qualifies when it is an unfragmented TCP/IPv4 packet without IP
 * options, whose IP length is exactly n, carrying data, with flags ACK (+ PSH) only. */
typedef struct {
    uint32_t thl;  /* TCP header length */
    uint32_t plen; /* payload bytes */
    uint32_t seq;
    uint8_t flags;
} tcp_seg;

int gro_candidate(const uint8_t *pkt, size_t n, tcp_seg *s);
/* 1 when b continues the flow of head: same addresses, ports, TOS, TTL, DF, ACK number, window,
 * TCP header length and options, same flags but PSH (both already candidates) */
int gro_same_flow(const uint8_t *head, const tcp_seg *hs, const uint8_t *b, const tcp_seg *bs);
/* 1 when the IPv4 header checksum and the TCP checksum of a candidate are right */
int tcp4_csum_ok(const uint8_t *pkt, size_t n);
/* turn the head of a coalesced run into the super-packet's header: IP total length and checksum,
 * PSH when the last segment had it, TCP checksum field = pseudo-header sum (the kernel finishes it) */
void gro_finish_head(uint8_t *head, uint32_t total, int psh);

#endif
