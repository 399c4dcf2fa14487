/* emrshare's C helpers around mcl (native/helpers.c). Plain declarations only:
   this file is both cffi cdef input and a C header (included after
   <mcl/bn_c384_256.h>). Scalars are 32-byte little-endian arrays, already
   reduced mod r. No helper keeps a pointer to its arguments. */

/* The source hash compiled into the extension (build.py: source_hash()). */
const char *emr_source_hash(void);

/* Scalar multiplication; ct != 0 selects mcl's constant-time mulCT. */
void emr_g1_mul(mclBnG1 *out, const mclBnG1 *p, const uint8_t *k, int ct);
void emr_g2_mul(mclBnG2 *out, const mclBnG2 *p, const uint8_t *k, int ct);
/* sum k_i P_i (public scalars); pts is modified (normalized) in place. ks: n*32 bytes. */
int emr_g1_msm(mclBnG1 *out, mclBnG1 *pts, const uint8_t *ks, size_t n);
int emr_g2_msm(mclBnG2 *out, mclBnG2 *pts, const uint8_t *ks, size_t n);

/* Pairings. qbuf holds mclBn_getUint64NumToPrecompute() words from mclBn_precomputeG2. */
void emr_pairing_prepared(mclBnGT *out, const mclBnG1 *p, const uint64_t *qbuf);
void emr_multi_pairing(mclBnGT *out, const mclBnG1 *ps, const mclBnG2 *qs, size_t n);

/* GT exponentiation. */
void emr_gt_pow(mclBnGT *out, const mclBnGT *x, const uint8_t *k);
int emr_gt_multi_pow(mclBnGT *out, const mclBnGT *xs, const uint8_t *ks, size_t n);
/* Fixed-base Z^k from a table built once by emr_gt_table_init (not thread-safe:
   call it once, before any emr_gt_generator_pow). Table lookups are constant-time
   selects (every entry of a window is read). */
void emr_gt_table_init(const mclBnGT *z);
int emr_gt_table_ready(void);
size_t emr_gt_table_bytes(void);
void emr_gt_generator_pow(mclBnGT *out, const uint8_t *k);

/* Fixed-base k g1 for a secret k (constant time: signed odd digits, masked
   table reads; see helpers.c). emr_g1_table_init(g1) once, before any use (not
   thread-safe, like the GT table). */
void emr_g1_table_init(const mclBnG1 *g);
int emr_g1_table_ready(void);
size_t emr_g1_table_bytes(void);
void emr_g1_generator_mul(mclBnG1 *out, const uint8_t *k);

/* GT membership (gt_membership.cpp, Scott's test: x != 0, x^(p^4) x = x^(p^2),
   x^p = x^u): 1 iff x lies in the order-r subgroup. Not constant time (public
   data). emr_gt_is_cyclotomic: 1 iff x != 0 and x^(p^4 - p^2 + 1) = 1.
   emr_gt_frobenius: y = x^p. */
int emr_gt_is_valid(const mclBnGT *x);
int emr_gt_is_cyclotomic(const mclBnGT *x);
void emr_gt_frobenius(mclBnGT *y, const mclBnGT *x);

/* Monotonic clock in ns (for the timing loops). */
uint64_t emr_now_ns(void);

/* Bare timing loops for the benchmark: run the operation n times, return ns.
   The scalar multiplications time emr_g1_mul / emr_g2_mul, the very calls the
   backend makes (scalar decoding and wiping included; mulCT when ct). */
uint64_t emr_bench_g1_generator_mul(const uint8_t *k, size_t n);
/* fast != 0: emr_gt_is_valid; else mclBnGT_isValid (x^r). */
uint64_t emr_bench_gt_is_valid(const mclBnGT *x, int fast, size_t n);
uint64_t emr_bench_pairing(const mclBnG1 *p, const mclBnG2 *q, size_t n);
uint64_t emr_bench_pairing_prepared(const mclBnG1 *p, const uint64_t *qbuf, size_t n);
uint64_t emr_bench_g1_mul(const mclBnG1 *p, const uint8_t *k, int ct, size_t n);
uint64_t emr_bench_g2_mul(const mclBnG2 *p, const uint8_t *k, int ct, size_t n);
uint64_t emr_bench_gt_pow(const mclBnGT *x, const uint8_t *k, size_t n);
uint64_t emr_bench_gt_generator_pow(const uint8_t *k, size_t n);
uint64_t emr_bench_gt_generator_pow_plain(const uint8_t *k, size_t n);
uint64_t emr_bench_gt_multi_pow(const mclBnGT *xs, const uint8_t *ks, size_t m, size_t n);
