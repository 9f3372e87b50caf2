/* Product-mode Gaussian adaptive attention on the CPU, one read of the data.
 *
 * The same maths as functional.py's _GaussianProduct (read its docstring
 * first), arranged so that every slice is loaded from memory once and each
 * further pass over it runs in cache: the forward reads x and writes out (and
 * the weights w only when asked: they are not needed later); the backward
 * reads gout and x, recomputes w from x and four numbers per slice kept by
 * the forward, and writes gx. The per-head algebra (collapsing G Gaussians
 * into one, and the chain rule back to the offsets and scales) runs here too,
 * in double, so that a layer is one call each way.
 *
 * Layout: x is (P, H, N, Q), contiguous; a slice is x[p, h, :, q]. Offsets
 * and scales are (H, G). ``stats`` is (4, P, H, Q), see Stats below. The
 * optional 0/1 mask is (Pm, H, N, Qm) with Pm in {1, P} and Qm in {1, Q}.
 *
 * Work is cut into groups of up to LANES slices that are processed side by
 * side, one "lane" per slice, so that the per-slice arithmetic vectorises
 * across lanes too:
 *   Q > 1:  a group is LANES neighbouring q of one (p, h); element (i, lane)
 *           sits at i * Q + lane, and loops over lanes are unit-stride;
 *   Q == 1: a group is LANES consecutive slices (p, h), each contiguous;
 *           element (i, lane) sits at lane * N + i and loops run over i.
 *
 * One layout has its own code: slices of 8 or 16 contiguous values (Q == 1,
 * float32, no mask, with AVX2 and FMA) run 8 at a time in registers, see
 * "rows of 8 or 16 in registers" below.
 *
 * The loop macros below read the group through the locals that GROUP_LOCALS
 * declares, so that the compiler sees no aliasing between them and the data.
 *
 * Compiled twice by native.py, with REAL=float and REAL=double; the function
 * names end in SFX (f32 or f64).
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#ifndef REAL
#define REAL float
#define SFX f32
#define REAL_IS_FLOAT
#endif
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define NAME(f) CAT(f, SFX)

typedef int64_t i64;
typedef REAL real;

#define LANES 64
/* A slice whose sum of exp(alpha d^2) falls below this is redone shifted by its max. */
#define UNDERFLOW ((real)1e-6)
#define GRAIN 32768 /* elements below which a call stays on one thread */

#ifdef REAL_IS_FLOAT
/* exp(x) for x <= 0 in a form the compiler vectorises: x = n ln2 + r with
 * |r| <= ln2 / 2, exp(r) by its Taylor series to r^7 (relative error below
 * 1e-8 before rounding), 2^n from the exponent bits; 0 below -87. */
static inline float exp_nonpos(float x) {
    const float xc = x < -87.0f ? -87.0f : x;
    const float n = floorf(xc * 1.44269504f + 0.5f);
    float r = xc - n * 0.693145752f;
    r = r - n * 1.42860677e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } two_n = {.i = ((int32_t)n + 127) << 23};
    const float y = p * two_n.f;
    return x < -87.0f ? 0.0f : y;
}
#define EXP exp_nonpos
#else
#define EXP exp
#endif

/* Weights far below 1 make subnormal products, which cost many times a
 * normal one: each thread flushes them to 0 while it runs a kernel (they are
 * below 1.2e-38 in float32), and restores its previous setting after. */
#if defined(__SSE__)
#include <xmmintrin.h>
#define FLUSH_DENORMALS_BEGIN const unsigned int csr_ = _mm_getcsr(); _mm_setcsr(csr_ | 0x8040u);
#define FLUSH_DENORMALS_END _mm_setcsr(csr_);
#else
#define FLUSH_DENORMALS_BEGIN
#define FLUSH_DENORMALS_END
#endif

/* Where one group's data lives. */
typedef struct {
    i64 n_lanes;
    i64 k0;          /* per-slice index (into the stats) of lane 0 */
    i64 lane_stride; /* element (i, lane) is at offset i * i_stride + lane * lane_stride */
    i64 i_stride;
    i64 data0;       /* offset of element (0, 0) */
    const real *mask; /* element (i, lane) of the mask: mask[mask0[lane] + i * mask_i] */
    i64 mask_i;
    i64 mask0[LANES];
    /* each lane's head and its coefficients, for `key` (a group's first head)
     * and `filled` lanes: neighbouring groups often share them */
    i64 key, filled;
    i64 head[LANES];
    real A[LANES], b[LANES], R[LANES], K[LANES];
} Group;

static inline void lane_heads(Group *g, i64 h0, int cycle, const real *coef, i64 H) {
    if (g->key == h0 && g->filled >= g->n_lanes) return;
    for (i64 l = 0, h = h0; l < g->n_lanes; l++) {
        g->head[l] = h;
        g->A[l] = coef[h], g->b[l] = coef[H + h], g->R[l] = coef[2 * H + h], g->K[l] = coef[3 * H + h];
        if (cycle) h = h + 1 == H ? 0 : h + 1;
    }
    g->key = h0, g->filled = g->n_lanes;
}

static void group_at(Group *g, i64 t, const real *coef, const real *m, i64 Pm, i64 Qm, i64 P, i64 H,
                     i64 N, i64 Q) {
    if (Q > 1) {
        const i64 per = (Q + LANES - 1) / LANES, ph = t / per, q0 = (t % per) * LANES;
        const i64 p = ph / H, h = ph % H;
        g->n_lanes = Q - q0 < LANES ? Q - q0 : LANES;
        g->k0 = ph * Q + q0;
        g->lane_stride = 1;
        g->i_stride = Q;
        g->data0 = ph * N * Q + q0;
        g->mask_i = Qm;
        lane_heads(g, h, 0, coef, H);
        if (m)
            for (i64 l = 0; l < g->n_lanes; l++) g->mask0[l] = ((Pm > 1 ? p : 0) * H + h) * N * Qm + (Qm > 1 ? q0 + l : 0);
    } else {
        const i64 s0 = t * LANES;
        g->n_lanes = P * H - s0 < LANES ? P * H - s0 : LANES;
        g->k0 = s0;
        g->lane_stride = N;
        g->i_stride = 1;
        g->data0 = s0 * N;
        g->mask_i = 1;
        lane_heads(g, s0 % H, 1, coef, H);
        if (m)
            for (i64 l = 0; l < g->n_lanes; l++) g->mask0[l] = (Pm > 1 ? s0 + l : g->head[l]) * N;
    }
    g->mask = m;
}

/* Short contiguous slices (Q == 1, N <= SHORT) are copied into a column tile,
 * t[i * LANES + lane], and processed like the Q > 1 layout: the loops then
 * run across lanes at full vector width instead of over 8 or 16 values at a
 * time. The copies run in cache (8 x 8 blocks at a time with AVX). */
#define SHORT 32

static inline i64 as_tile(Group *g) {
    const i64 d0 = g->data0; /* where the group's rows start in the data */
    g->data0 = 0, g->i_stride = LANES, g->lane_stride = 1;
    return d0;
}

#if defined(REAL_IS_FLOAT) && defined(__AVX__)
#include <immintrin.h>
#define UNROLL _Pragma("GCC unroll 16") /* fixed short loops: keep the vectors in registers */
/* Transposes the 8 x 8 block of floats held in r[0..7], in place. */
static inline __attribute__((always_inline)) void transpose8_regs(__m256 r[8]) {
    __m256 t[8], u[8];
    UNROLL for (int j = 0; j < 8; j += 2) {
        t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);     /* 00 10 01 11 | 04 14 05 15 */
        t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]); /* 02 12 03 13 | 06 16 07 17 */
    }
    UNROLL for (int j = 0; j < 8; j += 4) {
        u[j] = _mm256_shuffle_ps(t[j], t[j + 2], 0x44);     /* 00 10 20 30 | 04 14 24 34 */
        u[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], 0xEE); /* 01 11 21 31 | 05 ... */
        u[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0x44);
        u[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0xEE);
    }
    UNROLL for (int k = 0; k < 4; k++) {
        r[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
        r[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
    }
}

/* dst[k * ds + j] = src[j * ss + k] for an 8 x 8 block of floats. */
static inline void transpose8(const float *src, i64 ss, float *dst, i64 ds) {
    __m256 r[8];
    for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(src + j * ss);
    transpose8_regs(r);
    for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + k * ds, r[k]);
}
#define BLOCKS8(L, N) ((L) % 8 == 0 && (N) % 8 == 0)
#else
#define BLOCKS8(L, N) 0
static inline void transpose8(const real *src, i64 ss, real *dst, i64 ds) {
    (void)src, (void)ss, (void)dst, (void)ds;
}
#endif

/* dst[l * dl + i * di] = src[l * sl + i * si] for the lanes l < L and the
 * positions i < N, where each pair of strides is 1 and something else: a
 * transpose, between a group's rows and its column tile. */
static inline void transpose_group(i64 L, i64 N, const real *restrict src, i64 sl, i64 si,
                                   real *restrict dst, i64 dl, i64 di) {
    if (BLOCKS8(L, N)) {
        for (i64 l = 0; l < L; l += 8)
            for (i64 i = 0; i < N; i += 8)
                transpose8(src + l * sl + i * si, sl * si, dst + l * dl + i * di, dl * di);
        return;
    }
    for (i64 l = 0; l < L; l++)
        for (i64 i = 0; i < N; i++) dst[l * dl + i * di] = src[l * sl + i * si];
}

static inline void tile_in(const Group *g, i64 d0, i64 N, const real *restrict src, real *restrict t) {
    transpose_group(g->n_lanes, N, src + d0, N, 1, t, 1, LANES);
}

static inline void tile_out(const Group *g, i64 d0, i64 N, const real *restrict t, real *restrict dst) {
    transpose_group(g->n_lanes, N, t, 1, LANES, dst + d0, N, 1);
}

/* Work items of a call: groups, or blocks of 8 slices for the rows kept in registers. */
static i64 n_groups(i64 P, i64 H, i64 Q, int rows) {
    if (rows) return (P * H + 7) / 8;
    return Q > 1 ? P * H * ((Q + LANES - 1) / LANES) : (P * H + LANES - 1) / LANES;
}

/* Loops over every element (i, lane) of a group, with unit-stride inner loops
 * in both layouts. Inside BODY: `at` is the element's offset, `mv` its
 * validity (1 or 0) and `l` its lane. */
#define MASK_AT(g, l, i) (masked ? mk_[mk0_[l] + (i) * mi_] : 1)

#define GROUP_LOCALS(g)                                                             \
    const i64 L = (g)->n_lanes, lst_ = (g)->lane_stride, ist_ = (g)->i_stride;      \
    const i64 d0_ = (g)->data0, mi_ = (g)->mask_i;                                  \
    const real *restrict mk_ = (g)->mask;                                           \
    const i64 *restrict mk0_ = (g)->mask0;                                          \
    (void)mk_, (void)mk0_, (void)mi_;

/* Elementwise, no reduction. */
#define FOR_EACH(g, N, BODY)                                                        \
    if (lst_ == 1) {                                                                \
        for (i64 i = 0; i < (N); i++) {                                             \
            _Pragma("omp simd") for (i64 l = 0; l < L; l++) {                       \
                const i64 at = d0_ + i * ist_ + l;                                  \
                const real mv = MASK_AT(g, l, i); (void)mv;                         \
                BODY                                                                \
            }                                                                       \
        }                                                                           \
    } else {                                                                        \
        for (i64 l = 0; l < L; l++) {                                               \
            _Pragma("omp simd") for (i64 i = 0; i < (N); i++) {                     \
                const i64 at = d0_ + l * lst_ + i;                                  \
                const real mv = MASK_AT(g, l, i); (void)mv;                         \
                BODY                                                                \
            }                                                                       \
        }                                                                           \
    }

/* a1[l] += sum over i of E1 and, when TWO, a2[l] += sum of E2 (after BODY,
 * which may define temporaries and write elements). */
#define SUM_IMPL(g, N, BODY, a1, E1, a2, E2, TWO)                                   \
    if (lst_ == 1) {                                                                \
        for (i64 i = 0; i < (N); i++) {                                             \
            _Pragma("omp simd") for (i64 l = 0; l < L; l++) {                       \
                const i64 at = d0_ + i * ist_ + l;                                  \
                const real mv = MASK_AT(g, l, i); (void)mv;                         \
                BODY a1[l] += (E1);                                                 \
                if (TWO) a2[l] += (E2);                                             \
            }                                                                       \
        }                                                                           \
    } else {                                                                        \
        for (i64 l = 0; l < L; l++) {                                               \
            real r1 = 0, r2 = 0;                                                    \
            _Pragma("omp simd reduction(+ : r1, r2)") for (i64 i = 0; i < (N); i++) {\
                const i64 at = d0_ + l * lst_ + i;                                  \
                const real mv = MASK_AT(g, l, i); (void)mv;                         \
                BODY r1 += (E1);                                                    \
                if (TWO) r2 += (E2);                                                \
            }                                                                       \
            a1[l] += r1;                                                            \
            if (TWO) a2[l] += r2;                                                   \
        }                                                                           \
    }
#define SUM_EACH(g, N, BODY, a1, E1, a2, E2) SUM_IMPL(g, N, BODY, a1, E1, a2, E2, 1)
#define SUM1(g, N, BODY, a1, E1) SUM_IMPL(g, N, BODY, a1, E1, a1, 0, 0)

/* a[l] = max(a[l], max over i of E). */
#define MAX_EACH(g, N, a, E)                                                        \
    if (lst_ == 1) {                                                                \
        for (i64 i = 0; i < (N); i++) {                                             \
            _Pragma("omp simd") for (i64 l = 0; l < L; l++) {                       \
                const i64 at = d0_ + i * ist_ + l;                                  \
                const real mv = MASK_AT(g, l, i); (void)mv;                         \
                const real e_ = (E);                                                \
                a[l] = e_ > a[l] ? e_ : a[l];                                       \
            }                                                                       \
        }                                                                           \
    } else {                                                                        \
        for (i64 l = 0; l < L; l++) {                                               \
            real r = a[l];                                                          \
            _Pragma("omp simd reduction(max : r)") for (i64 i = 0; i < (N); i++) {  \
                const i64 at = d0_ + l * lst_ + i;                                  \
                const real mv = MASK_AT(g, l, i); (void)mv;                         \
                const real e_ = (E);                                                \
                r = e_ > r ? e_ : r;                                                \
            }                                                                       \
            a[l] = r;                                                               \
        }                                                                           \
    }

/* Run CALL with `mk` (masked or not) as a constant: the unmasked loops then
 * carry no mask loads. */
#define SPECIALISE(CALL)                                                            \
    if (m) {                                                                        \
        const int mk = 1;                                                           \
        CALL;                                                                       \
    } else {                                                                        \
        const int mk = 0;                                                           \
        CALL;                                                                       \
    }

/* ------------------------------------------------------- head coefficients */

/* The product of a head's G Gaussians as one Gaussian (functional.py's
 * head_coefficients): coef = (A, b, R, K), each of length H, from the offsets
 * m and the scales c, both (H, G). Computed in double. */
static void head_coefficients(const real *m, const real *c, i64 H, i64 G, real *coef) {
    for (i64 h = 0; h < H; h++) {
        double A = 0, km = 0, R = 0, K = 0;
        for (i64 j = 0; j < G; j++) {
            const double cj = c[h * G + j], k = 0.5 / (cj * cj);
            A += k, km += k * m[h * G + j], K += log(fabs(cj));
        }
        const double b = km / A;
        for (i64 j = 0; j < G; j++) {
            const double cj = c[h * G + j], dm = m[h * G + j] - b;
            R += 0.5 / (cj * cj) * dm * dm;
        }
        coef[h] = A, coef[H + h] = b, coef[2 * H + h] = R;
        coef[3 * H + h] = K + G * 0.91893853320467274178; /* log sqrt(2 pi) */
    }
}

/* The offsets' and scales' gradients (H, G) from the head sums acc (4 x H):
 * the sums over a head's slices of S2 / v, S0 / v, S0 and gmu, i.e. minus
 * dL/dA, minus dL/dR, minus dL/dK and dL/db (as in _GaussianProduct.backward). */
static void head_gradients(const real *m, const real *c, i64 H, i64 G, const double *acc,
                           real *gm, real *gc) {
    for (i64 h = 0; h < H; h++) {
        double A = 0, km = 0;
        for (i64 j = 0; j < G; j++) {
            const double cj = c[h * G + j], k = 0.5 / (cj * cj);
            A += k, km += k * m[h * G + j];
        }
        const double b = km / A, sA = acc[4 * h], sR = acc[4 * h + 1], sK = acc[4 * h + 2],
                     gb = acc[4 * h + 3];
        for (i64 j = 0; j < G; j++) {
            const double cj = c[h * G + j], k = 0.5 / (cj * cj), dm = m[h * G + j] - b;
            const double gk = gb / A * dm - sA - sR * dm * dm;
            gm[h * G + j] = (gb / A - 2 * sR * dm) * k;
            gc[h * G + j] = (gk / (cj * cj) + sK) / -cj;
        }
    }
}

/* ------------------------------------------------------------------ forward */

/* Per-slice statistics, rows of ``stats`` (each P * H * Q long). The weights
 * are w = exp(alpha d^2 - shift) * |scale| with d = x - mean - b and
 * alpha = -A / v, so the backward pass recomputes them from x and these. */
typedef struct {
    real *mean, *var, *shift, *scale; /* var includes eps; scale < 0: the eps clamp is active */
} Stats;

static inline Stats stats_rows(real *stats, i64 slices) {
    return (Stats){stats, stats + slices, stats + 2 * slices, stats + 3 * slices};
}

/* One group: out (and, when keep_w, w) from x. w is also the scratch that
 * holds the unnormalised weights; it may be the same memory as out when the
 * caller does not want the weights (keep_w = 0). */
static inline __attribute__((always_inline)) void forward_group(const Group *g, int masked, const real *restrict x, real *out,
                          real *w, int keep_w, Stats st, i64 N, real eps, real log_eps, int residual) {
    GROUP_LOCALS(g)
    const i64 k0 = g->k0;
    real n[LANES], mu[LANES], sq[LANES], alpha[LANES], emax[LANES], s[LANES];
#pragma omp simd
    for (i64 l = 0; l < L; l++) n[l] = masked ? 0 : (real)N, mu[l] = 0, sq[l] = 0, emax[l] = 0, s[l] = 0;
    /* mean over the valid positions */
    if (masked) {
        SUM_EACH(g, N, , n, mv, mu, mv > 0 ? x[at] : 0)
    } else {
        SUM1(g, N, , mu, x[at])
    }
#pragma omp simd
    for (i64 l = 0; l < L; l++) mu[l] /= n[l] > 1 ? n[l] : 1;
    /* unbiased variance over them; 0 with fewer than two */
    SUM1(g, N, const real dx = mv > 0 ? x[at] - mu[l] : 0;, sq, dx * dx)
#pragma omp simd
    for (i64 l = 0; l < L; l++) {
        sq[l] = sq[l] / (n[l] - 1 > 1 ? n[l] - 1 : 1) + eps; /* now v */
        alpha[l] = -g->A[l] / sq[l];
        st.mean[k0 + l] = mu[l];
        mu[l] += g->b[l]; /* now mu + b, as the backward pass recomputes it */
    }
    /* log p = alpha d^2 + top with d = x - mu - b and top = -R / v - K; since
     * alpha d^2 <= 0, the log-sum-exp needs no shift beyond top (emax = 0) */
    SUM1(g, N,
             const real d = x[at] - mu[l];
             const real t = mv > 0 ? EXP(alpha[l] * d * d) : 0;
             w[at] = t;, s, t)
    int low = 0;
#pragma omp simd reduction(| : low)
    for (i64 l = 0; l < L; l++) low |= (s[l] < UNDERFLOW) & (n[l] > 0);
    if (low) {
        /* a slice's sum is tiny or 0 although it has valid positions (small c,
         * many Gaussians): shift the group's slices by their largest alpha d^2,
         * kept in w so that the largest term is exactly exp(0) = 1 */
        for (i64 l = 0; l < L; l++) emax[l] = -INFINITY, s[l] = 0;
        FOR_EACH(g, N, {
            const real d = x[at] - mu[l];
            w[at] = mv > 0 ? alpha[l] * d * d : -INFINITY;
        })
        MAX_EACH(g, N, emax, w[at])
        for (i64 l = 0; l < L; l++) emax[l] = emax[l] == -INFINITY ? 0 : emax[l];
        SUM1(g, N, const real t = mv > 0 ? EXP(w[at] - emax[l]) : 0; w[at] = t;, s, t)
    }
    /* w = t exp(top + emax - max(logsumexp, log eps)) with logsumexp = top +
     * emax + log s. With r = log eps - top - emax the clamp is inactive when
     * s > exp(r), and then w = t / s; else w = t exp(-r). */
#pragma omp simd
    for (i64 l = 0; l < L; l++) {
        const real r = log_eps - (-g->R[l] / sq[l] - g->K[l] + emax[l]);
        const real e = EXP(r > 0 ? -r : r); /* exp(-|r|) */
        const int active = r > 0 ? s[l] * e > 1 : s[l] > e;
        alpha[l] = s[l] == 0 ? 0 : active ? 1 / s[l] : r > 0 ? e : 1 / e; /* now the scale */
        st.var[k0 + l] = sq[l];
        st.shift[k0 + l] = emax[l];
        st.scale[k0 + l] = active ? alpha[l] : -alpha[l];
    }
    if (keep_w) {
        FOR_EACH(g, N, {
            const real wq = w[at] * alpha[l];
            const real xz = mv > 0 ? x[at] : 0;
            w[at] = wq;
            out[at] = mv > 0 ? (residual ? x[at] + xz * wq : xz * wq) : x[at];
        })
    } else {
        FOR_EACH(g, N, {
            const real wq = w[at] * alpha[l];
            const real xz = mv > 0 ? x[at] : 0;
            out[at] = mv > 0 ? (residual ? x[at] + xz * wq : xz * wq) : x[at];
        })
    }
}

/* --------------------------------------------- rows of 8 or 16 in registers */

/* Slices of 8 or 16 contiguous values (Q == 1, no mask; heads over a last
 * axis of 64, say) are most of the work in many models and too short for
 * the column tiles to pay: here 8 slices at a time are loaded as rows,
 * transposed in registers so that each vector holds one position of the 8
 * slices, and the whole forward or backward of the block runs in registers
 * (the same formulas as forward_group and backward_group, one lane per
 * slice), with one transpose back on the way out. */
#if defined(REAL_IS_FLOAT) && defined(__AVX2__) && defined(__FMA__)
#define ROWS8(Q, N, m) ((Q) == 1 && !(m) && ((N) == 8 || (N) == 16))
typedef __m256 v8;
#define V(a) _mm256_set1_ps(a)

/* exp_nonpos on 8 lanes. */
static inline __attribute__((always_inline)) v8 v8_exp(v8 x) {
    const v8 xc = _mm256_max_ps(x, V(-87.0f));
    const v8 n = _mm256_floor_ps(_mm256_fmadd_ps(xc, V(1.44269504f), V(0.5f)));
    v8 r = _mm256_fnmadd_ps(n, V(0.693145752f), xc);
    r = _mm256_fnmadd_ps(n, V(1.42860677e-6f), r);
    v8 p = V(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, V(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, V(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, V(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, V(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, V(0.5f));
    p = _mm256_fmadd_ps(p, r, V(1.0f));
    p = _mm256_fmadd_ps(p, r, V(1.0f));
    const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const v8 y = _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
    return _mm256_andnot_ps(_mm256_cmp_ps(x, V(-87.0f), _CMP_LT_OQ), y);
}

static inline v8 v8_sum(const v8 *a, int N) {
    v8 s = a[0];
    UNROLL for (int i = 1; i < N; i++) s = _mm256_add_ps(s, a[i]);
    return s;
}

/* a[i] = element i of the 8 rows at src (row stride N), i < N. */
static inline __attribute__((always_inline)) void rows_in(const float *src, int N, v8 *a) {
    UNROLL for (int c = 0; c < N; c += 8) {
        UNROLL for (int l = 0; l < 8; l++) a[c + l] = _mm256_loadu_ps(src + l * N + c);
        transpose8_regs(a + c);
    }
}

/* The inverse of rows_in; a is overwritten. */
static inline __attribute__((always_inline)) void rows_out(v8 *a, int N, float *dst) {
    UNROLL for (int c = 0; c < N; c += 8) {
        transpose8_regs(a + c);
        UNROLL for (int l = 0; l < 8; l++) _mm256_storeu_ps(dst + l * N + c, a[c + l]);
    }
}

/* The per-lane head coefficients (A, b, R, K) of 8 slices whose first is of
 * head h0, into cf; kept while h0 stays the same (*key). */
static inline void rows_coefficients(i64 h0, const real *coef, i64 H, v8 cf[4], i64 *key) {
    if (*key == h0) return;
    float t[4][8];
    UNROLL for (int l = 0, h = h0; l < 8; l++, h = h + 1 == H ? 0 : h + 1)
        UNROLL for (int k = 0; k < 4; k++) t[k][l] = coef[k * H + h];
    UNROLL for (int k = 0; k < 4; k++) cf[k] = _mm256_loadu_ps(t[k]);
    *key = h0;
}

/* 8 slices of N: out (and w, when not NULL) from x; stats at st[k]. */
static inline __attribute__((always_inline)) void rows_forward(const float *x, float *out, float *w, Stats st, i64 k,
                                                               const v8 cf[4], const int N, float eps, float log_eps, int residual) {
    v8 X[16], T[16];
    rows_in(x, N, X);
    const v8 mu = _mm256_mul_ps(v8_sum(X, N), V(1.0f / N)); /* exact: N is 8 or 16 */
    UNROLL for (int i = 0; i < N; i++) T[i] = _mm256_sub_ps(X[i], mu), T[i] = _mm256_mul_ps(T[i], T[i]);
    const v8 v = _mm256_fmadd_ps(v8_sum(T, N), V(1.0f / (N - 1)), V(eps)), inv_v = _mm256_div_ps(V(1.0f), v);
    const v8 alpha = _mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), cf[0]), inv_v), mb = _mm256_add_ps(mu, cf[1]);
    UNROLL for (int i = 0; i < N; i++) {
        const v8 d = _mm256_sub_ps(X[i], mb);
        T[i] = _mm256_mul_ps(_mm256_mul_ps(alpha, d), d); /* alpha d^2 <= 0 */
    }
    v8 emax = _mm256_setzero_ps(), E[16];
    UNROLL for (int i = 0; i < N; i++) E[i] = v8_exp(T[i]);
    v8 s = v8_sum(E, N);
    const v8 low = _mm256_cmp_ps(s, V(UNDERFLOW), _CMP_LT_OQ);
    if (_mm256_movemask_ps(low)) { /* as in forward_group: shift those slices by their max */
        v8 top = T[0];
        UNROLL for (int i = 1; i < N; i++) top = _mm256_max_ps(top, T[i]);
        emax = _mm256_and_ps(low, top);
        UNROLL for (int i = 0; i < N; i++) E[i] = v8_exp(_mm256_sub_ps(T[i], emax));
        s = v8_sum(E, N);
    }
    /* the eps clamp, as in forward_group */
    const v8 top = _mm256_sub_ps(_mm256_sub_ps(emax, cf[3]), _mm256_mul_ps(cf[2], inv_v));
    const v8 r = _mm256_sub_ps(V(log_eps), top);
    const v8 rpos = _mm256_cmp_ps(r, _mm256_setzero_ps(), _CMP_GT_OQ);
    const v8 e = v8_exp(_mm256_or_ps(r, V(-0.0f))); /* exp(-|r|) */
    const v8 active = _mm256_blendv_ps(_mm256_cmp_ps(s, e, _CMP_GT_OQ), _mm256_cmp_ps(_mm256_mul_ps(s, e), V(1.0f), _CMP_GT_OQ), rpos);
    v8 scale = _mm256_blendv_ps(_mm256_blendv_ps(_mm256_div_ps(V(1.0f), e), e, rpos), _mm256_div_ps(V(1.0f), s), active);
    scale = _mm256_andnot_ps(_mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_EQ_OQ), scale);
    _mm256_storeu_ps(st.mean + k, mu);
    _mm256_storeu_ps(st.var + k, v);
    _mm256_storeu_ps(st.shift + k, emax);
    _mm256_storeu_ps(st.scale + k, _mm256_blendv_ps(_mm256_sub_ps(_mm256_setzero_ps(), scale), scale, active));
    UNROLL for (int i = 0; i < N; i++) {
        E[i] = _mm256_mul_ps(E[i], scale);
        T[i] = residual ? _mm256_fmadd_ps(X[i], E[i], X[i]) : _mm256_mul_ps(X[i], E[i]);
    }
    if (w) rows_out(E, N, w);
    rows_out(T, N, out);
}

/* 8 slices of N, the first `lanes` of them real: gx (when not NULL) and the
 * head sums (added to acc for the real lanes), as in backward_group. */
static inline __attribute__((always_inline)) void rows_backward(const float *gout, const float *x, Stats st, i64 k, float *gx,
                                                                double *acc, i64 h0, int lanes, i64 H, const v8 cf[4], const int N, int residual) {
    v8 X[16], Gr[16], W[16];
    rows_in(x, N, X);
    rows_in(gout, N, Gr);
    const v8 v = _mm256_loadu_ps(st.var + k), signed_scale = _mm256_loadu_ps(st.scale + k);
    const v8 mu = _mm256_add_ps(_mm256_loadu_ps(st.mean + k), cf[1]), sh = _mm256_loadu_ps(st.shift + k);
    const v8 inv_v = _mm256_div_ps(V(1.0f), v), alpha = _mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), cf[0]), inv_v);
    const v8 sc = _mm256_andnot_ps(V(-0.0f), signed_scale);
    const v8 inactive = _mm256_cmp_ps(signed_scale, _mm256_setzero_ps(), _CMP_GT_OQ);
    v8 S = _mm256_setzero_ps();
    UNROLL for (int i = 0; i < N; i++) {
        const v8 d = _mm256_sub_ps(X[i], mu);
        W[i] = _mm256_mul_ps(v8_exp(_mm256_fmsub_ps(_mm256_mul_ps(alpha, d), d, sh)), sc);
        S = _mm256_fmadd_ps(_mm256_mul_ps(Gr[i], W[i]), X[i], S);
    }
    const v8 c0 = _mm256_and_ps(inactive, S);
    v8 S1 = _mm256_setzero_ps(), S2 = _mm256_setzero_ps();
    UNROLL for (int i = 0; i < N; i++) { /* ge = (gout x - c0) w; ged = ge d */
        const v8 gw = _mm256_mul_ps(Gr[i], W[i]);
        const v8 ge = _mm256_fnmadd_ps(c0, W[i], _mm256_mul_ps(gw, X[i]));
        X[i] = _mm256_sub_ps(X[i], mu); /* now d */
        W[i] = ge;
        Gr[i] = residual ? _mm256_add_ps(Gr[i], gw) : gw; /* gx's terms without the sums */
        const v8 ged = _mm256_mul_ps(ge, X[i]);
        S1 = _mm256_add_ps(S1, ged);
        S2 = _mm256_fmadd_ps(ged, X[i], S2);
    }
    const v8 S0 = _mm256_andnot_ps(inactive, S), two_alpha = _mm256_add_ps(alpha, alpha);
    const v8 gv = _mm256_mul_ps(_mm256_fmadd_ps(cf[0], S2, _mm256_mul_ps(cf[2], S0)), _mm256_mul_ps(inv_v, inv_v));
    const v8 gmu = _mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), two_alpha), S1);
    const v8 beta1 = _mm256_mul_ps(gv, V(2.0f / (N - 1)));
    const v8 beta0 = _mm256_fmadd_ps(beta1, cf[1], _mm256_mul_ps(gmu, V(1.0f / N)));
    float sums[4][8];
    _mm256_storeu_ps(sums[0], _mm256_mul_ps(S2, inv_v));
    _mm256_storeu_ps(sums[1], _mm256_mul_ps(S0, inv_v));
    _mm256_storeu_ps(sums[2], S0);
    _mm256_storeu_ps(sums[3], gmu);
    UNROLL for (int l = 0, h = h0; l < lanes; l++, h = h + 1 == H ? 0 : h + 1) {
        double *a = acc + 4 * h;
        a[0] += sums[0][l], a[1] += sums[1][l], a[2] += sums[2][l], a[3] += sums[3][l];
    }
    if (!gx) return;
    UNROLL for (int i = 0; i < N; i++) { /* gx = gout w + (2 alpha ge + beta1) d + beta0 (+ gout) */
        Gr[i] = _mm256_add_ps(Gr[i], _mm256_fmadd_ps(_mm256_fmadd_ps(two_alpha, W[i], beta1), X[i], beta0));
    }
    rows_out(Gr, N, gx);
}

/* The head of slice s (a division only when H is not a power of two). */
static inline i64 head_of(i64 s, i64 H) { return (H & (H - 1)) == 0 ? s & (H - 1) : s % H; }

/* Block t (slices 8t to 8t + 7 of S) of the forward; a last, partial block
 * goes through zero-padded copies. */
static void rows_forward_at(i64 t, const real *x, real *out, real *w, Stats st, const real *coef, i64 H, i64 S,
                            i64 N, real eps, real log_eps, int residual, v8 cf[4], i64 *key) {
    const i64 s0 = 8 * t, lanes = S - s0 < 8 ? S - s0 : 8, at = s0 * N;
    float xb[8 * 16], ob[8 * 16], wb[8 * 16], sb[4 * 8];
    const int part = lanes < 8;
    const Stats sl = part ? stats_rows(sb, 8) : st;
    const i64 k = part ? 0 : s0;
    if (part) {
        memset(xb, 0, sizeof xb);
        memcpy(xb, x + at, sizeof(float) * lanes * N);
    }
    const float *xs = part ? xb : x + at;
    float *os = part ? ob : out + at, *ws = part ? wb : w ? w + at : NULL;
    rows_coefficients(head_of(s0, H), coef, H, cf, key);
    if (N == 8) rows_forward(xs, os, ws, sl, k, cf, 8, eps, log_eps, residual);
    else rows_forward(xs, os, ws, sl, k, cf, 16, eps, log_eps, residual);
    if (!part) return;
    memcpy(out + at, ob, sizeof(float) * lanes * N);
    if (w) memcpy(w + at, wb, sizeof(float) * lanes * N);
    for (int l = 0; l < lanes; l++)
        st.mean[s0 + l] = sl.mean[l], st.var[s0 + l] = sl.var[l], st.shift[s0 + l] = sl.shift[l], st.scale[s0 + l] = sl.scale[l];
}

/* Block t of the backward, as rows_forward_at. */
static void rows_backward_at(i64 t, const real *gout, const real *x, Stats st, real *gx, double *acc, const real *coef,
                             i64 H, i64 S, i64 N, int residual, v8 cf[4], i64 *key) {
    const i64 s0 = 8 * t, lanes = S - s0 < 8 ? S - s0 : 8, at = s0 * N, h0 = head_of(s0, H);
    float xb[8 * 16], gb[8 * 16], gxb[8 * 16], sb[4 * 8];
    const int part = lanes < 8;
    const Stats sl = part ? stats_rows(sb, 8) : st;
    const i64 k = part ? 0 : s0;
    if (part) {
        for (int j = 0; j < 4 * 8; j++) sb[j] = 1; /* finite numbers in the padding lanes */
        memset(xb, 0, sizeof xb), memset(gb, 0, sizeof gb);
        memcpy(xb, x + at, sizeof(float) * lanes * N);
        memcpy(gb, gout + at, sizeof(float) * lanes * N);
        for (int l = 0; l < lanes; l++)
            sl.mean[l] = st.mean[s0 + l], sl.var[l] = st.var[s0 + l], sl.shift[l] = st.shift[s0 + l], sl.scale[l] = st.scale[s0 + l];
    }
    const float *gs = part ? gb : gout + at, *xs = part ? xb : x + at;
    float *gxs = part ? gxb : gx ? gx + at : NULL;
    rows_coefficients(h0, coef, H, cf, key);
    if (N == 8) rows_backward(gs, xs, sl, k, gxs, acc, h0, lanes, H, cf, 8, residual);
    else rows_backward(gs, xs, sl, k, gxs, acc, h0, lanes, H, cf, 16, residual);
    if (part && gx) memcpy(gx + at, gxb, sizeof(float) * lanes * N);
}
#define ROWS_STATE v8 cf[4]; i64 key = -1;
#else
#define ROWS8(Q, N, m) 0
#define ROWS_STATE void *cf = NULL; i64 key = -1;
static void rows_forward_at(i64 t, const real *x, real *out, real *w, Stats st, const real *coef, i64 H, i64 S,
                            i64 N, real eps, real log_eps, int residual, void *cf, i64 *key) {}
static void rows_backward_at(i64 t, const real *gout, const real *x, Stats st, real *gx, double *acc, const real *coef,
                             i64 H, i64 S, i64 N, int residual, void *cf, i64 *key) {}
#endif

void NAME(gaa_forward)(const real *x, real *out, real *w, real *stats, const real *m, i64 Pm,
                       i64 Qm, const real *offsets, const real *scales, i64 G, i64 P, i64 H, i64 N,
                       i64 Q, real eps, int residual) {
    real coef[4 * H];
    head_coefficients(offsets, scales, H, G, coef);
    const Stats st = stats_rows(stats, P * H * Q);
    const real log_eps = eps > 0 ? log(eps) : -INFINITY;
    const int rows = ROWS8(Q, N, m);
    const i64 groups = n_groups(P, H, Q, rows);
#pragma omp parallel if (P * H * N * Q >= GRAIN)
    {
        FLUSH_DENORMALS_BEGIN
        Group g = {.key = -1};
        ROWS_STATE
#pragma omp for schedule(static)
        for (i64 t = 0; t < groups; t++) {
            if (rows) {
                rows_forward_at(t, x, out, w, st, coef, H, P * H, N, eps, log_eps, residual, cf, &key);
                continue;
            }
            group_at(&g, t, coef, m, Pm, Qm, P, H, N, Q);
            if (Q == 1 && N <= SHORT) {
                real xt[SHORT * LANES], wt[SHORT * LANES], ot[SHORT * LANES];
                const i64 d0 = as_tile(&g);
                tile_in(&g, d0, N, x, xt);
                SPECIALISE(forward_group(&g, mk, xt, ot, wt, 1, st, N, eps, log_eps, residual));
                if (w) tile_out(&g, d0, N, wt, w);
                tile_out(&g, d0, N, ot, out);
            } else if (w) {
                SPECIALISE(forward_group(&g, mk, x, out, w, 1, st, N, eps, log_eps, residual));
            } else {
                SPECIALISE(forward_group(&g, mk, x, out, out, 0, st, N, eps, log_eps, residual));
            }
        }
        FLUSH_DENORMALS_END
    }
}

/* ----------------------------------------------------------------- backward */

/* dL/dx, and each slice's share of the sums from which the head parameters'
 * gradients follow, added to acc (4 x H). The derivation is in
 * _GaussianProduct.backward. The weights are recomputed from x and the
 * stats: once into wscr when the caller gives a scratch (it may be the same
 * memory as gx), else in each pass. */
static inline __attribute__((always_inline)) void backward_group(const Group *g, int masked, const real *restrict gout,
                           const real *restrict x, real *wscr, Stats st, real *gx,
                           double *restrict acc, i64 N, int residual) {
    GROUP_LOCALS(g)
    const i64 k0 = g->k0;
    real n[LANES], mu[LANES], alpha[LANES], sh[LANES], sc[LANES], S[LANES], S1[LANES], S2[LANES], c0[2 * LANES], c1[LANES], c2[LANES];
#pragma omp simd
    for (i64 l = 0; l < L; l++) {
        const real scale = st.scale[k0 + l];
        n[l] = masked ? 0 : (real)N, mu[l] = st.mean[k0 + l] + g->b[l], S[l] = 0, S1[l] = 0, S2[l] = 0;
        alpha[l] = -g->A[l] / st.var[k0 + l], sh[l] = st.shift[k0 + l], sc[l] = scale < 0 ? -scale : scale;
        c0[L + l] = scale > 0; /* the clamp is inactive */
    }
#define WEIGHT (mv > 0 ? EXP(alpha[l] * (x[at] - mu[l]) * (x[at] - mu[l]) - sh[l]) * sc[l] : 0)
#define W_AT (wscr ? wscr[at] : WEIGHT)
    /* S = sum of u = dL/dw * w = gout x w (w is 0 at invalid positions) */
    if (wscr) {
        if (masked) {
            SUM_EACH(g, N, const real wv = WEIGHT; wscr[at] = wv;, n, mv, S, gout[at] * wv * (mv > 0 ? x[at] : 0))
        } else {
            SUM1(g, N, const real wv = WEIGHT; wscr[at] = wv;, S, gout[at] * wv * x[at])
        }
    } else {
        if (masked) {
            SUM_EACH(g, N, const real wv = WEIGHT;, n, mv, S, gout[at] * wv * (mv > 0 ? x[at] : 0))
        } else {
            SUM1(g, N, const real wv = WEIGHT;, S, gout[at] * wv * x[at])
        }
    }
    /* ge = dL/d(log p) = w (gout x - c0), c0 = S where the clamp is inactive, else 0 */
#pragma omp simd
    for (i64 l = 0; l < L; l++) c0[l] = c0[L + l] > 0 ? S[l] : 0;
    SUM_EACH(g, N,
             const real xz = mv > 0 ? x[at] : 0;
             const real d = mv > 0 ? xz - mu[l] : 0;
             const real ged = (gout[at] * xz - c0[l]) * W_AT * d;, S1, ged, S2, ged * d)
#pragma omp simd
    for (i64 l = 0; l < L; l++) {
        const i64 k = k0 + l;
        const real inv_v = 1 / st.var[k];
        const real S0 = c0[L + l] > 0 ? 0 : S[l];
        const real two_alpha = 2 * alpha[l];
        const real gv = (g->A[l] * S2[l] + g->R[l] * S0) * inv_v * inv_v;
        const real gmu = -two_alpha * S1[l];
        const real beta1 = n[l] > 1 ? gv * 2 / (n[l] - 1) : 0;
        c1[l] = two_alpha;
        c2[l] = beta1;
        S[l] = gmu / (n[l] > 1 ? n[l] : 1) + beta1 * g->b[l]; /* now beta0 */
        /* the lane's share of the head sums (see head_gradients) */
        S1[l] = gmu;
        S2[l] *= inv_v;
        n[l] = S0;
        c0[L + l] = S0 * inv_v;
    }
    for (i64 l = 0; l < L; l++) {
        double *a = acc + 4 * g->head[l];
        a[0] += S2[l], a[1] += c0[L + l], a[2] += n[l], a[3] += S1[l];
    }
    if (!gx) return;
    /* gx = gout w + 2 alpha ge d + beta1 d + beta0 (+ gout); gout at invalid positions */
    FOR_EACH(g, N, {
        const real xz = mv > 0 ? x[at] : 0;
        const real d = xz - mu[l];
        const real wv = W_AT;
        const real ge = (gout[at] * xz - c0[l]) * wv;
        const real gv = gout[at] * wv + c1[l] * ge * d + c2[l] * d + S[l];
        gx[at] = mv > 0 ? (residual ? gv + gout[at] : gv) : gout[at];
    })
#undef W_AT
#undef WEIGHT
}

int NAME(gaa_backward)(const real *gout, const real *x, real *stats, const real *m, i64 Pm, i64 Qm,
                        const real *offsets, const real *scales, i64 G, real *gx, real *g_offsets,
                        real *g_scales, i64 P, i64 H, i64 N, i64 Q, int residual) {
    real coef[4 * H];
    head_coefficients(offsets, scales, H, G, coef);
    const Stats st = stats_rows(stats, P * H * Q);
    const int rows = ROWS8(Q, N, m);
    const i64 groups = n_groups(P, H, Q, rows);
    const int threads = P * H * N * Q >= GRAIN ? omp_get_max_threads() : 1;
    /* one row of head sums per thread, added up in thread order afterwards so
     * that the result does not depend on timing */
    double *acc = calloc((size_t)threads * 4 * H, sizeof(double));
    if (!acc) return 1;
#pragma omp parallel num_threads(threads)
    {
        double *mine = acc + (i64)omp_get_thread_num() * 4 * H;
        FLUSH_DENORMALS_BEGIN
        Group g = {.key = -1};
        ROWS_STATE
#pragma omp for schedule(static)
        for (i64 t = 0; t < groups; t++) {
            if (rows) {
                rows_backward_at(t, gout, x, st, gx, mine, coef, H, P * H, N, residual, cf, &key);
                continue;
            }
            group_at(&g, t, coef, m, Pm, Qm, P, H, N, Q);
            if (Q == 1 && N <= SHORT) {
                real gt_[SHORT * LANES], xt[SHORT * LANES], wt[SHORT * LANES], gxt[SHORT * LANES];
                const i64 d0 = as_tile(&g);
                tile_in(&g, d0, N, gout, gt_);
                tile_in(&g, d0, N, x, xt);
                SPECIALISE(backward_group(&g, mk, gt_, xt, wt, st, gx ? gxt : NULL, mine, N, residual));
                if (gx) tile_out(&g, d0, N, gxt, gx);
            } else if (gx) {
                SPECIALISE(backward_group(&g, mk, gout, x, gx, st, gx, mine, N, residual));
            } else {
                SPECIALISE(backward_group(&g, mk, gout, x, NULL, st, NULL, mine, N, residual));
            }
        }
        FLUSH_DENORMALS_END
    }
    for (int t = 1; t < threads; t++)
        for (i64 j = 0; j < 4 * H; j++) acc[j] += acc[t * 4 * H + j];
    head_gradients(offsets, scales, H, G, acc, g_offsets, g_scales);
    free(acc);
    return 0;
}
