/* emrshare C helpers around mcl: where one C call replaces several Python-level
   calls, plus the fixed-base table for Z^k and bare timing loops.
   Declarations and contracts: helpers.h. */

#define _POSIX_C_SOURCE 199309L
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <mcl/bn_c384_256.h>
#include "helpers.h"

#ifndef EMR_SOURCE_HASH
#error "EMR_SOURCE_HASH must be defined by the build (native/build.py)"
#endif

#define SCALAR_BYTES 32

const char *emr_source_hash(void) { return EMR_SOURCE_HASH; }

static void fr_from_le(mclBnFr *y, const uint8_t *k)
{
    /* k < r by contract; setLittleEndian keeps it unchanged then. */
    mclBnFr_setLittleEndian(y, k, SCALAR_BYTES);
}

static mclBnFr *frs_from_le(const uint8_t *ks, size_t n)
{
    mclBnFr *ys = (mclBnFr *)malloc((n ? n : 1) * sizeof(mclBnFr));
    if (ys == NULL) return NULL;
    for (size_t i = 0; i < n; i++) fr_from_le(&ys[i], ks + SCALAR_BYTES * i);
    return ys;
}

/* ------------------------------------------------------------ scalar mul */

void emr_g1_mul(mclBnG1 *out, const mclBnG1 *p, const uint8_t *k, int ct)
{
    mclBnFr y;
    fr_from_le(&y, k);
    if (ct) mclBnG1_mulCT(out, p, &y); else mclBnG1_mul(out, p, &y);
    memset(&y, 0, sizeof(y));
}

void emr_g2_mul(mclBnG2 *out, const mclBnG2 *p, const uint8_t *k, int ct)
{
    mclBnFr y;
    fr_from_le(&y, k);
    if (ct) mclBnG2_mulCT(out, p, &y); else mclBnG2_mul(out, p, &y);
    memset(&y, 0, sizeof(y));
}

/* emr_g1_msm (g2 == 0: out, pts are mclBnG1) and emr_g2_msm (mclBnG2): the public
   scalars decoded into one temporary array, -1 when it cannot be allocated. */
static int msm(void *out, void *pts, const uint8_t *ks, size_t n, int g2)
{
    mclBnFr *ys = frs_from_le(ks, n);
    if (ys == NULL) return -1;
    if (g2) mclBnG2_mulVec((mclBnG2 *)out, (mclBnG2 *)pts, ys, n);
    else mclBnG1_mulVec((mclBnG1 *)out, (mclBnG1 *)pts, ys, n);
    free(ys);
    return 0;
}

int emr_g1_msm(mclBnG1 *out, mclBnG1 *pts, const uint8_t *ks, size_t n) { return msm(out, pts, ks, n, 0); }

int emr_g2_msm(mclBnG2 *out, mclBnG2 *pts, const uint8_t *ks, size_t n) { return msm(out, pts, ks, n, 1); }

/* ------------------------------------------------------------ pairings */

void emr_pairing_prepared(mclBnGT *out, const mclBnG1 *p, const uint64_t *qbuf)
{
    mclBnGT f;
    mclBn_precomputedMillerLoop(&f, p, qbuf);
    mclBn_finalExp(out, &f);
}

void emr_multi_pairing(mclBnGT *out, const mclBnG1 *ps, const mclBnG2 *qs, size_t n)
{
    mclBnGT f;
    mclBn_millerLoopVec(&f, ps, qs, n);
    mclBn_finalExp(out, &f);
}

/* ------------------------------------------------------------ GT */

void emr_gt_pow(mclBnGT *out, const mclBnGT *x, const uint8_t *k)
{
    mclBnFr y;
    fr_from_le(&y, k);
    mclBnGT_pow(out, x, &y);
    memset(&y, 0, sizeof(y));
}

int emr_gt_multi_pow(mclBnGT *out, const mclBnGT *xs, const uint8_t *ks, size_t n)
{
    mclBnFr *ys = frs_from_le(ks, n);
    if (ys == NULL) return -1;
    mclBnGT_powVec(out, xs, ys, n);
    free(ys);
    return 0;
}

/* Fixed-base table: with 4-bit windows, TABLE[i][j] = Z^(j * 16^i) for
   i < 64, j < 16, so Z^k = prod_i TABLE[i][nibble_i(k)]: 64 Fp12
   multiplications and no squaring (576 KiB). Each lookup reads the whole row
   and keeps the wanted entry with masks, so the memory access pattern does not
   depend on k. */
#define WIN_BITS 4
#define WIN_SIZE (1 << WIN_BITS)
#define WINDOWS ((SCALAR_BYTES * 8) / WIN_BITS)
#define GT_WORDS (sizeof(mclBnGT) / sizeof(uint64_t))

static mclBnGT gt_table[WINDOWS][WIN_SIZE];
static int gt_table_ready = 0;

void emr_gt_table_init(const mclBnGT *z)
{
    mclBnGT base = *z;
    for (int i = 0; i < WINDOWS; i++) {
        mclBnGT_setInt32(&gt_table[i][0], 1);
        gt_table[i][1] = base;
        for (int j = 2; j < WIN_SIZE; j++) mclBnGT_mul(&gt_table[i][j], &gt_table[i][j - 1], &base);
        mclBnGT_mul(&base, &gt_table[i][WIN_SIZE - 1], &base); /* base^16 */
    }
    gt_table_ready = 1;
}

int emr_gt_table_ready(void) { return gt_table_ready; }

size_t emr_gt_table_bytes(void) { return sizeof(gt_table); }

/* Constant-time table lookup: out = rows[idx] (each row `words` 64-bit words,
   `count` rows), reading every row, with no branch or address depending on idx. */
static void ct_select_words(uint64_t *out, const uint64_t *rows, size_t words, unsigned count, unsigned idx)
{
    memset(out, 0, words * sizeof(uint64_t));
    for (unsigned j = 0; j < count; j++) {
        /* mask = all ones iff j == idx, computed without a branch */
        uint64_t mask = (uint64_t)0 - ((((uint64_t)(j ^ idx)) - 1) >> 63);
        const uint64_t *src = rows + (size_t)j * words;
        for (size_t w = 0; w < words; w++) out[w] |= src[w] & mask;
    }
}

static void ct_select(mclBnGT *out, const mclBnGT *row, unsigned idx)
{
    ct_select_words((uint64_t *)out, (const uint64_t *)row, GT_WORDS, WIN_SIZE, idx);
}

void emr_gt_generator_pow(mclBnGT *out, const uint8_t *k)
{
    mclBnGT acc, t;
    ct_select(&acc, gt_table[0], k[0] & 0x0f);
    for (int i = 1; i < WINDOWS; i++) {
        unsigned nib = (k[i >> 1] >> ((i & 1) * 4)) & 0x0f;
        ct_select(&t, gt_table[i], nib);
        mclBnGT_mul(&acc, &acc, &t);
    }
    *out = acc;
    memset(&t, 0, sizeof(t));
}

/* ------------------------------------------------------------ fixed-base G1 */

/* k g1 for a secret k, constant time. The scalar is made odd without a branch
   (k' = k + r when k is even: k' g1 = k g1, and k' < 2r < 2^256) and recoded
   into 64 odd signed 4-bit digits (regular recoding, Joye-Tunstall):
       d_i = (k_i mod 32) - 16,  k_{i+1} = (k_i >> 4) | 1   for i < 63,
       d_63 = k_63 = (k' >> 252) | 1,
   so k' = sum d_i 16^i with every d_i odd in [-15, 15] (never zero). Table
   row i holds d * 16^i g1 for the 16 odd d in [-15, 15], normalized (z = 1),
   so no entry is the identity and every lookup is a masked read of the whole
   row. The accumulator S_i = sum_{j<i} d_j 16^j is odd, hence never the
   identity; it equals +-(next entry) only when an integer of absolute value
   below 16^(i+1) < r vanishes mod r, which cannot happen for i < 63, and for the
   last window only for two specific scalars out of 2^255 (mcl's add then
   doubles: still correct, a negligible timing difference). So mcl's add never
   takes its identity branches, and its mixed-addition branch depends only on the
   window index. 64 x 16 x 144 bytes = 144 KiB. */
#define G1_WINDOWS 64
#define G1_ROW 16
#define G1_WORDS (sizeof(mclBnG1) / sizeof(uint64_t))

static mclBnG1 g1_table[G1_WINDOWS][G1_ROW];
static int g1_table_ready = 0;

/* r, the group order, little-endian 64-bit limbs. */
static const uint64_t ORDER_R[4] = {
    0xffffffff00000001ULL, 0x53bda402fffe5bfeULL, 0x3339d80809a1d805ULL, 0x73eda753299d7d48ULL,
};

void emr_g1_table_init(const mclBnG1 *g)
{
    mclBnG1 base = *g, twice, odd;
    for (int i = 0; i < G1_WINDOWS; i++) {
        mclBnG1_dbl(&twice, &base);
        odd = base;
        for (int m = 0; m < G1_ROW / 2; m++) {
            if (m) mclBnG1_add(&odd, &odd, &twice);
            mclBnG1_normalize(&g1_table[i][G1_ROW / 2 + m], &odd);      /* (2m+1) 16^i g */
            mclBnG1_neg(&g1_table[i][G1_ROW / 2 - 1 - m], &g1_table[i][G1_ROW / 2 + m]);
        }
        for (int s = 0; s < 4; s++) mclBnG1_dbl(&base, &base); /* 16^(i+1) g */
    }
    g1_table_ready = 1;
}

int emr_g1_table_ready(void) { return g1_table_ready; }

size_t emr_g1_table_bytes(void) { return sizeof(g1_table); }

static void ct_select_g1(mclBnG1 *out, const mclBnG1 *row, unsigned idx)
{
    ct_select_words((uint64_t *)out, (const uint64_t *)row, G1_WORDS, G1_ROW, idx);
}

/* The 64 digits of k (32 bytes little-endian, < r) as row indices (d + 15) / 2. */
static void g1_recode(uint8_t idx[G1_WINDOWS], const uint8_t *k)
{
    uint64_t w[4], carry = 0;
    for (int i = 0; i < 4; i++) {
        w[i] = 0;
        for (int b = 7; b >= 0; b--) w[i] = (w[i] << 8) | k[8 * i + b];
    }
    uint64_t even = (w[0] & 1) - 1; /* all ones iff k is even */
    for (int i = 0; i < 4; i++) {   /* w += r & even, k + r < 2^256 */
        uint64_t add = ORDER_R[i] & even;
        uint64_t s = w[i] + add;
        uint64_t c1 = s < add;
        uint64_t s2 = s + carry;
        uint64_t c2 = s2 < carry;
        w[i] = s2;
        carry = c1 | c2;
    }
    for (int i = 0; i < G1_WINDOWS - 1; i++) {
        int d = (int)(w[0] & 31) - 16;
        idx[i] = (uint8_t)((d + 15) >> 1);
        w[0] = (w[0] >> 4) | (w[1] << 60);
        w[1] = (w[1] >> 4) | (w[2] << 60);
        w[2] = (w[2] >> 4) | (w[3] << 60);
        w[3] >>= 4;
        w[0] |= 1;
    }
    idx[G1_WINDOWS - 1] = (uint8_t)(((int)w[0] + 15) >> 1); /* w < 16 and odd here */
    memset(w, 0, sizeof(w));
    even = 0;
}

void emr_g1_generator_mul(mclBnG1 *out, const uint8_t *k)
{
    uint8_t idx[G1_WINDOWS];
    mclBnG1 acc, t;
    g1_recode(idx, k);
    ct_select_g1(&acc, g1_table[0], idx[0]);
    for (int i = 1; i < G1_WINDOWS; i++) {
        ct_select_g1(&t, g1_table[i], idx[i]);
        mclBnG1_add(&acc, &acc, &t);
    }
    *out = acc;
    memset(idx, 0, sizeof(idx));
    memset(&t, 0, sizeof(t));
    memset(&acc, 0, sizeof(acc));
}

/* ------------------------------------------------------------ bare timing loops */

uint64_t emr_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
#define now_ns emr_now_ns

uint64_t emr_bench_g1_generator_mul(const uint8_t *k, size_t n)
{
    mclBnG1 r;
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++) emr_g1_generator_mul(&r, k);
    return now_ns() - t0;
}

uint64_t emr_bench_pairing(const mclBnG1 *p, const mclBnG2 *q, size_t n)
{
    mclBnGT e;
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++) mclBn_pairing(&e, p, q);
    return now_ns() - t0;
}

uint64_t emr_bench_pairing_prepared(const mclBnG1 *p, const uint64_t *qbuf, size_t n)
{
    mclBnGT e;
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++) emr_pairing_prepared(&e, p, qbuf);
    return now_ns() - t0;
}

uint64_t emr_bench_g1_mul(const mclBnG1 *p, const uint8_t *k, int ct, size_t n)
{
    mclBnG1 r;
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++) emr_g1_mul(&r, p, k, ct);
    return now_ns() - t0;
}

uint64_t emr_bench_g2_mul(const mclBnG2 *p, const uint8_t *k, int ct, size_t n)
{
    mclBnG2 r;
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++) emr_g2_mul(&r, p, k, ct);
    return now_ns() - t0;
}

uint64_t emr_bench_gt_pow(const mclBnGT *x, const uint8_t *k, size_t n)
{
    mclBnGT r;
    mclBnFr y;
    fr_from_le(&y, k);
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++) mclBnGT_pow(&r, x, &y);
    return now_ns() - t0;
}

uint64_t emr_bench_gt_generator_pow(const uint8_t *k, size_t n)
{
    mclBnGT r;
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++) emr_gt_generator_pow(&r, k);
    return now_ns() - t0;
}

/* Same lookups without the constant-time select (for comparison only). */
uint64_t emr_bench_gt_generator_pow_plain(const uint8_t *k, size_t n)
{
    mclBnGT r;
    uint64_t t0 = now_ns();
    for (size_t it = 0; it < n; it++) {
        r = gt_table[0][k[0] & 0x0f];
        for (int i = 1; i < WINDOWS; i++) {
            unsigned nib = (k[i >> 1] >> ((i & 1) * 4)) & 0x0f;
            mclBnGT_mul(&r, &r, &gt_table[i][nib]);
        }
    }
    return now_ns() - t0;
}

uint64_t emr_bench_gt_multi_pow(const mclBnGT *xs, const uint8_t *ks, size_t m, size_t n)
{
    mclBnGT r;
    mclBnFr *ys = frs_from_le(ks, m);
    if (ys == NULL) return 0;
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++) mclBnGT_powVec(&r, xs, ys, m);
    uint64_t dt = now_ns() - t0;
    free(ys);
    return dt;
}
