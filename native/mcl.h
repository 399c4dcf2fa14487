/* The subset of mcl's C API (include/mcl/bn.h, bn_c384_256 build) that emrshare
   binds. cffi declarations only: the real header is included by set_source.
   Struct layouts come from the compiler (`...;`); sizes are checked at import. */

typedef struct { ...; } mclBnFr;
typedef struct { ...; } mclBnFp;
typedef struct { ...; } mclBnG1;
typedef struct { ...; } mclBnG2;
typedef struct { ...; } mclBnGT;

int mclBn_getVersion(void);
int mclBn_init(int curve, int compiledTimeVar);
void mclBn_setETHserialization(int enable);
int mclBn_getETHserialization(void);
void mclBn_verifyOrderG1(int doVerify);
void mclBn_verifyOrderG2(int doVerify);
int mclBn_getUint64NumToPrecompute(void);

size_t mclBnG1_deserialize(mclBnG1 *x, const void *buf, size_t bufSize);
size_t mclBnG2_deserialize(mclBnG2 *x, const void *buf, size_t bufSize);
size_t mclBnGT_deserialize(mclBnGT *x, const void *buf, size_t bufSize);
size_t mclBnG1_serialize(void *buf, size_t maxBufSize, const mclBnG1 *x);
size_t mclBnG2_serialize(void *buf, size_t maxBufSize, const mclBnG2 *x);
size_t mclBnGT_serialize(void *buf, size_t maxBufSize, const mclBnGT *x);

int mclBnFr_setLittleEndian(mclBnFr *x, const void *buf, size_t bufSize);
int mclBnFr_setLittleEndianMod(mclBnFr *x, const void *buf, size_t bufSize);

void mclBnG1_clear(mclBnG1 *x);
int mclBnG1_isValid(const mclBnG1 *x);
int mclBnG1_isValidOrder(const mclBnG1 *x);
int mclBnG1_isEqual(const mclBnG1 *x, const mclBnG1 *y);
int mclBnG1_isZero(const mclBnG1 *x);
void mclBnG1_neg(mclBnG1 *y, const mclBnG1 *x);
void mclBnG1_add(mclBnG1 *z, const mclBnG1 *x, const mclBnG1 *y);
void mclBnG1_dbl(mclBnG1 *y, const mclBnG1 *x);
void mclBnG1_normalize(mclBnG1 *y, const mclBnG1 *x);
void mclBnG1_mul(mclBnG1 *z, const mclBnG1 *x, const mclBnFr *y);
void mclBnG1_mulCT(mclBnG1 *z, const mclBnG1 *x, const mclBnFr *y);
void mclBnG1_mulVec(mclBnG1 *z, mclBnG1 *x, const mclBnFr *y, size_t n);

void mclBnG2_clear(mclBnG2 *x);
int mclBnG2_isValid(const mclBnG2 *x);
int mclBnG2_isValidOrder(const mclBnG2 *x);
int mclBnG2_isEqual(const mclBnG2 *x, const mclBnG2 *y);
int mclBnG2_isZero(const mclBnG2 *x);
void mclBnG2_neg(mclBnG2 *y, const mclBnG2 *x);
void mclBnG2_add(mclBnG2 *z, const mclBnG2 *x, const mclBnG2 *y);
void mclBnG2_mul(mclBnG2 *z, const mclBnG2 *x, const mclBnFr *y);
void mclBnG2_mulCT(mclBnG2 *z, const mclBnG2 *x, const mclBnFr *y);
void mclBnG2_mulVec(mclBnG2 *z, mclBnG2 *x, const mclBnFr *y, size_t n);

void mclBnGT_setInt32(mclBnGT *y, int x);
int mclBnGT_isEqual(const mclBnGT *x, const mclBnGT *y);
int mclBnGT_isOne(const mclBnGT *x);
int mclBnGT_isValid(const mclBnGT *x);
void mclBnGT_mul(mclBnGT *z, const mclBnGT *x, const mclBnGT *y);
void mclBnGT_inv(mclBnGT *y, const mclBnGT *x);
void mclBnGT_pow(mclBnGT *z, const mclBnGT *x, const mclBnFr *y);
void mclBnGT_powVec(mclBnGT *z, const mclBnGT *x, const mclBnFr *y, size_t n);

void mclBn_pairing(mclBnGT *z, const mclBnG1 *x, const mclBnG2 *y);
void mclBn_finalExp(mclBnGT *y, const mclBnGT *x);
void mclBn_millerLoopVec(mclBnGT *z, const mclBnG1 *x, const mclBnG2 *y, size_t n);
void mclBn_precomputeG2(uint64_t *Qbuf, const mclBnG2 *Q);
void mclBn_precomputedMillerLoop(mclBnGT *f, const mclBnG1 *P, const uint64_t *Qbuf);
