/* emrshare: fast membership test for GT, the order-r subgroup of Fp12^*
   (declared in helpers.h; C linkage). Compiled by native/build.py as C++
   because mcl's C API has no Frobenius map.

   Test (Scott, "A note on group membership tests for G1, G2 and GT on BLS
   pairing-friendly curves", ePrint 2021/1130, section on GT), derived here for
   BLS12-381 with u = -0xd201000000010000, r = u^4 - u^2 + 1,
   p = (u - 1)^2 r / 3 + u, so p = u (mod r):

     1. x != 0;
     2. x^(p^4) * x == x^(p^2), i.e. x^Phi12(p) = 1 with Phi12(p) = p^4 - p^2 + 1:
        x lies in the cyclotomic subgroup G_Phi12, cyclic of order Phi12(p) = r * h;
     3. x^p == x^u.

   Soundness: after (2) the order of x divides Phi12(p); (3) says it divides
   p - u. Since p = u (mod p - u), Phi12(p) = Phi12(u) = u^4 - u^2 + 1 = r
   (mod p - u), so gcd(p - u, Phi12(p)) = gcd(p - u, r) = r (r divides p - u).
   Hence the order of x divides r: x is in GT. Completeness: for x in GT,
   x^Phi12(p) = 1 (r divides Phi12(p)) and x^p = x^(p mod r) = x^u.

   x^u is computed as conj(x^|u|): inside G_Phi12, x^(p^6 + 1) = 1 (Phi12(p)
   divides p^6 + 1 = (p^2 + 1) Phi12(p)), so the inverse is the conjugate
   (the p^6 Frobenius). x^|u| uses Granger-Scott cyclotomic squarings, valid only
   inside G_Phi12, which step (2) has established. Nothing here uses
   mclBnGT_pow (its GLV split assumes membership). The test is on public data and
   is not constant time. Cost: 63 cyclotomic squarings + 5 multiplications +
   3 Frobenius maps, about 7x faster than x^r (mclBnGT_isValid). */

#include <mcl/bn_c384_256.h>
#include <mcl/bn.hpp>

extern "C" {
#include "helpers.h"
}

namespace {

using mcl::Fp2;
using mcl::Fp12;

static_assert(sizeof(Fp12) == sizeof(mclBnGT), "mcl C and C++ views of Fp12 differ");

/* |u| for BLS12-381. Unsigned: the parameter itself is negative. */
const uint64_t U_ABS = 0xd201000000010000ULL;

/* (a + b s)^2 in Fp4 = Fp2[s]/(s^2 - xi), xi = 1 + i: returns (c0, c1) with
   c0 = a^2 + xi b^2, c1 = 2ab = (a + b)^2 - a^2 - b^2. */
void fp4_sqr(Fp2 &c0, Fp2 &c1, const Fp2 &a, const Fp2 &b)
{
    Fp2 a2, b2, s, s2, d, xb2;
    Fp2::sqr(a2, a);
    Fp2::sqr(b2, b);
    Fp2::add(s, a, b);
    Fp2::sqr(s2, s);
    Fp2::sub(d, s2, a2);
    Fp2::sub(c1, d, b2);
    Fp2::mul_xi(xb2, b2);
    Fp2::add(c0, a2, xb2);
}

/* y = 3 t - 2 x  (sign = -1)  or  y = 3 t + 2 x  (sign = +1). */
void three_t_pm_two_x(Fp2 &y, const Fp2 &t, const Fp2 &x, int sign)
{
    Fp2 d, d2;
    if (sign < 0) Fp2::sub(d, t, x); else Fp2::add(d, t, x);
    Fp2::add(d2, d, d); /* 2(t -+ x) */
    Fp2::add(y, d2, t); /* 3t -+ 2x */
}

/* Granger-Scott squaring in the cyclotomic subgroup. Write Fp12 over
   Fp4 = Fp2[s], s = w^3 (s^2 = w^6 = xi), as x = A + B w + C w^2 with
   w^3 = s, A = (c_0, c_3), B = (c_1, c_4), C = (c_2, c_5) where c_i is the Fp2
   coefficient of w^i (mcl stores x = (a.a + a.b v + a.c v^2) + (b.a + b.b v +
   b.c v^2) w with v = w^2, so c_0..c_5 = a.a, b.a, a.b, b.b, a.c, b.c). For x in
   G_Phi12:
     x^2 = (3 A^2 - 2 conj A) + (3 s C^2 + 2 conj B) w + (3 B^2 - 2 conj C) w^2,
   conj(a + b s) = a - b s. Six Fp2 squarings instead of a full Fp12 squaring. */
void cyclotomic_sqr(Fp12 &y, const Fp12 &x)
{
    const Fp2 &a0 = x.a.a, &a1 = x.b.b; /* A */
    const Fp2 &b0 = x.b.a, &b1 = x.a.c; /* B */
    const Fp2 &c0 = x.a.b, &c1 = x.b.c; /* C */
    Fp2 ta0, ta1, tb0, tb1, tc0, tc1, sc0;
    fp4_sqr(ta0, ta1, a0, a1);
    fp4_sqr(tb0, tb1, b0, b1);
    fp4_sqr(tc0, tc1, c0, c1);
    Fp2::mul_xi(sc0, tc1); /* s C^2 = (xi tc1, tc0) */
    Fp12 r;
    three_t_pm_two_x(r.a.a, ta0, a0, -1);
    three_t_pm_two_x(r.b.b, ta1, a1, +1);
    three_t_pm_two_x(r.b.a, sc0, b0, +1);
    three_t_pm_two_x(r.a.c, tc0, b1, -1);
    three_t_pm_two_x(r.a.b, tb0, c0, -1);
    three_t_pm_two_x(r.b.c, tb1, c1, +1);
    y = r;
}

/* y = x^|u| for x in G_Phi12 (square-and-multiply, MSB first). */
void pow_u_abs(Fp12 &y, const Fp12 &x)
{
    Fp12 t = x;
    for (int i = 62; i >= 0; i--) {
        cyclotomic_sqr(t, t);
        if ((U_ABS >> i) & 1) Fp12::mul(t, t, x);
    }
    y = t;
}

bool in_cyclotomic(const Fp12 &x)
{
    Fp12 p2, p4;
    Fp12::Frobenius2(p2, x);
    Fp12::Frobenius2(p4, p2);
    Fp12::mul(p4, p4, x);
    return p4 == p2;
}

bool in_gt(const Fp12 &x)
{
    if (x.isZero() || !in_cyclotomic(x)) return false;
    Fp12 lhs, rhs;
    Fp12::Frobenius(lhs, x);
    pow_u_abs(rhs, x);
    Fp12::unitaryInv(rhs, rhs); /* x^u = conj(x^|u|) */
    return lhs == rhs;
}

} // namespace

extern "C" int emr_gt_is_valid(const mclBnGT *x)
{
    return in_gt(*reinterpret_cast<const Fp12 *>(x)) ? 1 : 0;
}

extern "C" int emr_gt_is_cyclotomic(const mclBnGT *x)
{
    const Fp12 &f = *reinterpret_cast<const Fp12 *>(x);
    return (!f.isZero() && in_cyclotomic(f)) ? 1 : 0;
}

extern "C" void emr_gt_frobenius(mclBnGT *y, const mclBnGT *x)
{
    Fp12::Frobenius(*reinterpret_cast<Fp12 *>(y), *reinterpret_cast<const Fp12 *>(x));
}

extern "C" uint64_t emr_bench_gt_is_valid(const mclBnGT *x, int fast, size_t n)
{
    volatile int sink = 0;
    uint64_t t0 = emr_now_ns();
    for (size_t i = 0; i < n; i++) sink = fast ? emr_gt_is_valid(x) : mclBnGT_isValid(x);
    (void)sink;
    return emr_now_ns() - t0;
}
