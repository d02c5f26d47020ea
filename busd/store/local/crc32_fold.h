/* The frames' crc32 (zlib's: CRC-32/ISO-HDLC, reflected, pre/post inverted), folded with
 * carry-less multiplication where the CPU has it.
 *
 * Why not zlib's: catch-up checks one crc per record, and zlib's crc32 (Debian's 1.2.13)
 * was 0.189 of the 0.228 µs that reading a 237-byte record from the page cache cost
 * (perf/catchup_read.py, "crc walk"). Folding 16 bytes per PCLMULQDQ pair is the method of
 * Gopal et al., "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ" (Intel,
 * 2009); the constants are x^(k) mod P(x) for this polynomial, bit-reflected, as that paper
 * derives them. The last 1..15 bytes are folded too (the tail step below): handed to
 * zlib, they made checking a 237-byte record 0.036 µs instead of 0.024
 * (perf/catchup_read.py, "crc walk"). Inputs shorter than 64 bytes, CPUs without
 * PCLMULQDQ/SSE4.1 and other architectures go to zlib, which stays the reference
 * (tests/store/test_crc32_fold.py compares the two on random and edge-case inputs).
 */
#ifndef BUSD_CRC32_FOLD_H
#define BUSD_CRC32_FOLD_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define BUSD_FOLD_MIN 64

/* pshufb masks: 16 bytes from busd_shift_table + r move a register's bytes r places, the
 * bytes shifted in zero (mask bytes with the high bit set). */
static const signed char busd_shift_table[48] = {
    -128, -128, -128, -128, -128, -128, -128, -128,
    -128, -128, -128, -128, -128, -128, -128, -128,
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    -128, -128, -128, -128, -128, -128, -128, -128,
    -128, -128, -128, -128, -128, -128, -128, -128,
};

/* The raw (not inverted) crc of len bytes, len >= 64. */
__attribute__((target("pclmul,sse4.1")))
static uint32_t busd_crc32_fold16(uint32_t crc, const unsigned char *p, size_t len)
{
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
    const __m128i k5 = _mm_set_epi64x(0, 0x0163cd6124LL);
    const __m128i poly_mu = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);
    const __m128i low32 = _mm_set_epi32(0, 0, 0, -1);
    __m128i x1 = _mm_loadu_si128((const __m128i *)p);
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x4 = _mm_loadu_si128((const __m128i *)(p + 48));
    __m128i t;
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    p += 64;
    len -= 64;
    /* four lanes, 64 bytes a step */
    while (len >= 64) {
#define BUSD_FOLD(x, k, next) \
        (x) = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128((x), (k), 0x00), \
                                          _mm_clmulepi64_si128((x), (k), 0x11)), (next))
        BUSD_FOLD(x1, k1k2, _mm_loadu_si128((const __m128i *)p));
        BUSD_FOLD(x2, k1k2, _mm_loadu_si128((const __m128i *)(p + 16)));
        BUSD_FOLD(x3, k1k2, _mm_loadu_si128((const __m128i *)(p + 32)));
        BUSD_FOLD(x4, k1k2, _mm_loadu_si128((const __m128i *)(p + 48)));
        p += 64;
        len -= 64;
    }
    /* the four lanes into one, then the rest 16 bytes a step */
    BUSD_FOLD(x1, k3k4, x2);
    BUSD_FOLD(x1, k3k4, x3);
    BUSD_FOLD(x1, k3k4, x4);
    while (len >= 16) {
        BUSD_FOLD(x1, k3k4, _mm_loadu_si128((const __m128i *)p));
        p += 16;
        len -= 16;
    }
    /* The last r = len (1..15) bytes T. x1 stands for 16 bytes of message still to be
     * reduced, so what is left is x1's bytes then T: 16 + r bytes, cut into two blocks
     * that end where T ends. The first is x1's first r bytes after 16 - r zero bytes
     * (leading zeros do not change a raw crc), the second x1's other 16 - r bytes then T,
     * T loaded as the last bytes of the 16 that end the input (64 or more came before). */
    if (len) {
        const __m128i up = _mm_loadu_si128((const __m128i *)(busd_shift_table + len));
        const __m128i down = _mm_loadu_si128((const __m128i *)(busd_shift_table + 16 + len));
        const __m128i last = _mm_loadu_si128((const __m128i *)(p + len - 16));
        __m128i first = _mm_shuffle_epi8(x1, up);  /* bytes i -> i + 16 - r */
        /* bytes i -> i - r, then T where `up` has no high bit: i >= 16 - r */
        BUSD_FOLD(first, k3k4, _mm_blendv_epi8(last, _mm_shuffle_epi8(x1, down), up));
        x1 = first;
    }
#undef BUSD_FOLD
    /* 128 -> 64 bits (appending the 32 zero bits the crc implies) -> 32 bits, Barrett */
    t = _mm_clmulepi64_si128(x1, k3k4, 0x10);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), t);
    t = _mm_srli_si128(x1, 4);
    x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k5, 0x00), t);
    t = x1;
    x1 = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), poly_mu, 0x10);
    x1 = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), poly_mu, 0x00);
    return (uint32_t)_mm_extract_epi32(_mm_xor_si128(x1, t), 1);
}

static int busd_crc32_can_fold = -1;  /* not asked yet; a benign race: all write one value */

/* Whether busd_crc32 folds on this CPU (the tests print it). */
static inline int busd_crc32_folds(void)
{
    if (busd_crc32_can_fold < 0) {
        __builtin_cpu_init();
        busd_crc32_can_fold = __builtin_cpu_supports("pclmul")
                              && __builtin_cpu_supports("sse4.1");
    }
    return busd_crc32_can_fold;
}

/* zlib's crc32(crc, p, len), for len up to a frame's 256 MiB. */
static inline uint32_t busd_crc32(uint32_t crc, const unsigned char *p, size_t len)
{
    if (len >= BUSD_FOLD_MIN && busd_crc32_folds())
        return ~busd_crc32_fold16(~crc, p, len);
    return (uint32_t)crc32(crc, p, (unsigned int)len);
}

#else

static inline uint32_t busd_crc32(uint32_t crc, const unsigned char *p, size_t len)
{
    return (uint32_t)crc32(crc, p, (unsigned int)len);
}

static inline int busd_crc32_folds(void)
{
    return 0;
}

#endif
#endif
