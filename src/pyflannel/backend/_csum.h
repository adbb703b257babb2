/*
 * The Internet checksum (RFC 1071) for the compiled udp pump: the one C copy, included by
 * _fastpump.c (the ICMP it injects) and _offload.c (IP/TCP checksums of TSO segments, partial
 * checksums, coalescing checks). The Python twin is pyflannel.core.packet.checksum.
 *
 * Sums are taken over host-order 32-bit words into 64 bits (RFC 1071: the ones'-complement sum does
 * not care about word size or byte order once folded) and the 16-bit result is stored with memcpy,
 * which puts it in the right byte order on any host.
 */
#ifndef PYFLANNEL_CSUM_H
#define PYFLANNEL_CSUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ones'-complement sum of n bytes added to acc (a region must start at an even offset of what the
 * checksum covers; an odd last byte is the high-order byte of a zero-padded word) */
static inline uint64_t csum_add(const uint8_t *p, size_t n, uint64_t acc) {
    while (n >= 32) {
        uint32_t w[8];
        memcpy(w, p, 32);
        acc += (uint64_t)w[0] + w[1] + w[2] + w[3] + w[4] + w[5] + w[6] + w[7];
        p += 32;
        n -= 32;
    }
    while (n >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        acc += w;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        acc += w;
        p += 2;
        n -= 2;
    }
    if (n) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        acc += p[0];
#else
        acc += (uint64_t)p[0] << 8;
#endif
    }
    return acc;
}

/* fold a sum to 16 bits with end-around carry (never 0 for a non-zero sum) */
static inline uint16_t csum_fold(uint64_t acc) {
    acc = (acc & 0xFFFFFFFFu) + (acc >> 32);
    acc = (acc & 0xFFFFFFFFu) + (acc >> 32);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    return (uint16_t)acc;
}

/* the checksum of n bytes whose checksum field is zero, ready to memcpy into that field */
static inline uint16_t csum_inet(const uint8_t *p, size_t n) {
    return (uint16_t)~csum_fold(csum_add(p, n, 0));
}

#endif
