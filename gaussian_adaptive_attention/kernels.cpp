// Product-mode Gaussian adaptive attention on the CPU: the fused kernels and
// the custom ops that carry them (namespace gaussian_adaptive_attention).
//
// The maths is functional.py's _GaussianProduct (read its docstring first),
// arranged so that each slice is read from memory once and every further pass
// over it runs in cache. The forward reads x and writes out (and the weights w
// only when asked: the backward does not need them); the backward reads the
// output gradient and x, recomputes w from x and four numbers per slice kept
// by the forward, and writes dL/dx. The per-head algebra (G Gaussians
// collapsed into one, and the chain rule back to the offsets and scales) runs
// here too, in double, so that a layer is one call each way.
//
// Layout: a layer sees x as (P, H, N, Q), contiguous; a slice is x[p, h, :, q].
// Offsets and scales are (H, G). ``stats`` is (4, P, H, Q): each slice's mean,
// variance + eps, shift and signed scale (see forward_core). The optional 0/1
// mask is (Pm, H, N, Qm) with Pm in {1, P} and Qm in {1, Q}.
//
// Vectorisation runs across slices, one slice per vector lane: a vector holds
// the same position i of V neighbouring slices (V = Vectorized<T>::size()),
// so the per-slice sums are plain vector adds and each vector of slices is
// taken through every pass while its statistics sit in registers:
//   Q > 1:  the lanes are V neighbouring q of one (p, h), in place (stride Q);
//   Q == 1: slices are contiguous rows, so a tile of up to 64 of them is
//           transposed into a scratch (position-major) first, and back after;
//           rows of 8 or 16 (float32) go 8 at a time through a block on the
//           stack, with N known at compile time (see Path).
// The maths of a vector of slices is written once (forward_core,
// backward_core) over an accessor for where its data lives.
// Portable through ATen's Vectorized<T> (AVX2, AVX-512, NEON, or plain loops,
// by the CPU_CAPABILITY it is compiled for) and at::parallel_for (PyTorch's
// thread pool: torch.set_num_threads applies). Work is cut into chunks whose
// size depends on the shape only, and the backward's per-head sums are added
// up chunk by chunk in order, so results do not depend on the thread count.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// Inline every call (exp and the transposes included) into the per-vector
// entry points, so that their vectors stay in registers.
#if defined(__GNUC__)
#define GAA_FLATTEN __attribute__((noinline, flatten))
#else
#define GAA_FLATTEN
#endif

#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#define GAA_HAVE_MXCSR 1
#endif

namespace gaa {
namespace {

using at::Tensor;
using at::vec::Vectorized;
using OptionalTensors = c10::List<std::optional<Tensor>>;

constexpr int64_t kTile = 64;        // lanes per item: along q, or slices per transposed tile
constexpr int64_t kTileElems = 4096; // at most this many elements per tile
constexpr int64_t kChunk = 16384;    // elements per unit of parallel work, at least
constexpr double kLogSqrt2Pi = 0.91893853320467274178;

// A slice whose sum of exp(alpha d^2) falls below this is redone, shifted by its max.
template <typename T>
constexpr T kUnderflow = T(1e-6);

// Products of tiny weights make subnormals, which cost many times a normal
// number on x86: flush them to zero while a kernel runs (they are below
// 1.2e-38 in float32), and restore the thread's setting after.
struct FlushDenormals {
#ifdef GAA_HAVE_MXCSR
  unsigned int saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

template <typename T>
C10_ALWAYS_INLINE Vectorized<T> vexp(const Vectorized<T>& a) {
#ifdef GAA_EXP_U10
  return a.exp();
#else
  return a.exp_u20();  // float: a polynomial, ~1e-6 relative; double: Sleef's exp
#endif
}

template <typename T>
C10_ALWAYS_INLINE Vectorized<T> load(const T* p, int64_t count) {
  return count == Vectorized<T>::size() ? Vectorized<T>::loadu(p) : Vectorized<T>::loadu(p, count);
}

template <typename T>
C10_ALWAYS_INLINE void store(const Vectorized<T>& a, T* p, int64_t count) {
  a.store(p, static_cast<int>(count));
}

// Whether any of the first `count` lanes of a comparison result is true.
template <typename T>
C10_ALWAYS_INLINE bool any_lane(const Vectorized<T>& mask, int64_t count) {
  const int64_t bits = ~static_cast<int64_t>(mask.zero_mask());  // a true lane has all bits set
  return (bits & ((int64_t(1) << count) - 1)) != 0;
}

// s mod H without a division where H is a power of two (a 64-bit division costs
// as much as a short slice's arithmetic).
inline int64_t mod_heads(int64_t s, int64_t H) {
  return (H & (H - 1)) == 0 ? s & (H - 1) : s % H;
}

// ------------------------------------------------------------ head algebra

// The product of a head's G Gaussians is one Gaussian: log p = -(A d^2 + R) / v - K
// with d = x - mu - b (functional.head_coefficients). Computed in double.
template <typename T>
struct Heads {
  std::vector<T> A, b, R, K;
};

template <typename T>
Heads<T> head_coefficients(const T* m, const T* c, int64_t H, int64_t G) {
  Heads<T> out{std::vector<T>(H), std::vector<T>(H), std::vector<T>(H), std::vector<T>(H)};
  for (int64_t h = 0; h < H; h++) {
    double A = 0, km = 0, R = 0, K = 0;
    for (int64_t j = 0; j < G; j++) {
      const double cj = c[h * G + j], k = 0.5 / (cj * cj);
      A += k, km += k * m[h * G + j], K += std::log(std::fabs(cj));
    }
    const double b = km / A;
    for (int64_t j = 0; j < G; j++) {
      const double cj = c[h * G + j], dm = m[h * G + j] - b;
      R += 0.5 / (cj * cj) * dm * dm;  // completing the square this way keeps R >= 0
    }
    out.A[h] = T(A), out.b[h] = T(b), out.R[h] = T(R), out.K[h] = T(K + G * kLogSqrt2Pi);
  }
  return out;
}

// dL/dm and dL/dc (H, G) from each head's sums of S2 / v, S0 / v, S0 and gmu
// over its slices: minus dL/dA, minus dL/dR, minus dL/dK and dL/db.
template <typename T>
void head_gradients(const T* m, const T* c, int64_t H, int64_t G, const double* acc, T* gm, T* gc) {
  for (int64_t h = 0; h < H; h++) {
    double A = 0, km = 0;
    for (int64_t j = 0; j < G; j++) {
      const double cj = c[h * G + j], k = 0.5 / (cj * cj);
      A += k, km += k * m[h * G + j];
    }
    const double b = km / A, sA = acc[4 * h], sR = acc[4 * h + 1], sK = acc[4 * h + 2], gb = acc[4 * h + 3];
    for (int64_t j = 0; j < G; j++) {
      const double cj = c[h * G + j], k = 0.5 / (cj * cj), dm = m[h * G + j] - b;
      const double gk = gb / A * dm - sA - sR * dm * dm;
      gm[h * G + j] = T((gb / A - 2 * sR * dm) * k);
      gc[h * G + j] = T((gk / (cj * cj) + sK) / -cj);
    }
  }
}

// ------------------------------------------------------- one vector of slices

// One vector of slices (one slice per lane, lanes < count): the statistics of
// lane l at [l], each lane's head coefficients, and the mask: element (i, lane)
// at mask[i * mask_stride + (mask_per_lane ? lane : 0)].
template <typename T>
struct Lanes {
  using Vec = Vectorized<T>;
  int64_t count;
  const T* mask;
  int64_t mask_stride;
  bool mask_per_lane;
  T *mean, *var, *shift, *scale;
  Vec A, b, R, K;

  C10_ALWAYS_INLINE Vec valid(int64_t i) const {  // 1 or 0 per lane
    return mask_per_lane ? load(mask + i * mask_stride, count) : Vec(mask[i * mask_stride]);
  }
};

// The data of a vector of slices in memory: element (i, lane) at i * stride + lane
// (w's at i * w_stride + lane), all V lanes readable and writable (a partial
// vector goes through a padded copy, so that no load needs a count). In the forward, w doubles as scratch for the
// unnormalised weights and may be out itself (keep_w false); in the backward,
// w is scratch for the weights.
template <typename T>
struct InMemory {
  using Vec = Vectorized<T>;
  const T* x;
  const T* gout;
  T* w;
  T* out;  // the output, or dL/dx in the backward (may be null there)
  int64_t stride, w_stride;
  bool keep_w;

  C10_ALWAYS_INLINE Vec x_at(int64_t i) const { return Vec::loadu(x + i * stride); }
  C10_ALWAYS_INLINE Vec g_at(int64_t i) const { return Vec::loadu(gout + i * stride); }
  C10_ALWAYS_INLINE Vec w_at(int64_t i) const { return Vec::loadu(w + i * w_stride); }
  C10_ALWAYS_INLINE void put_w(int64_t i, const Vec& a) { a.store(w + i * w_stride); }
  C10_ALWAYS_INLINE void put_out(int64_t i, const Vec& a) { a.store(out + i * stride); }
};

// A block of V slices on the stack, position-major (element (i, lane) at
// i * V + lane), with N known at compile time (8 or 16): the compiler keeps
// what fits in registers. The output replaces x: the cores write position i
// only after their last read of it.
template <typename T, int kN>
struct OnStack {
  using Vec = Vectorized<T>;
  static constexpr int64_t V = Vec::size();
  alignas(64) T x[kN * V];
  alignas(64) T g[kN * V];
  alignas(64) T w[kN * V];
  bool keep_w;

  C10_ALWAYS_INLINE Vec x_at(int64_t i) const { return Vec::loadu(x + i * V); }
  C10_ALWAYS_INLINE Vec g_at(int64_t i) const { return Vec::loadu(g + i * V); }
  C10_ALWAYS_INLINE Vec w_at(int64_t i) const { return Vec::loadu(w + i * V); }
  C10_ALWAYS_INLINE void put_w(int64_t i, const Vec& a) { a.store(w + i * V); }
  C10_ALWAYS_INLINE void put_out(int64_t i, const Vec& a) { a.store(x + i * V); }
};

// Runs body(i, k) for every position i < N, k = i % 2 picking one of two sets
// of accumulators: consecutive positions then do not wait on each other's sums
// (an add's latency is several of its issue slots).
template <typename F>
C10_ALWAYS_INLINE void over_positions(int64_t N, F&& body) {
  int64_t i = 0;
  for (; i + 1 < N; i += 2) {
    body(i, 0);
    body(i + 1, 1);
  }
  if (i < N) body(i, 0);
}

// out (and w) from x for one vector of slices, and the slices' statistics.
// kN > 0: N is known at compile time.
template <typename T, bool kMasked, int kN, typename Data>
C10_ALWAYS_INLINE void forward_core(const Lanes<T>& g, Data& a, int64_t n_positions, T eps, T log_eps, bool residual) {
  using Vec = Vectorized<T>;
  const int64_t N = kN > 0 ? kN : n_positions;
  const int64_t c = g.count;
  const Vec zero(T(0)), one(T(1)), minus_inf(-std::numeric_limits<T>::infinity());
  const Vec keep_x(residual ? T(1) : T(0));  // out = x * w + x * keep_x
  // mean and unbiased variance over the valid positions; 0 with fewer than two
  Vec n = Vec(T(N)), sum[2] = {zero, zero}, cnt[2] = {zero, zero};
  if constexpr (kMasked) {
    over_positions(N, [&](int64_t i, int k) {
      const Vec m = g.valid(i);
      cnt[k] = cnt[k] + m;
      sum[k] = sum[k] + Vec::blendv(zero, a.x_at(i), m > zero);  // NaN or inf padding stays out
    });
    n = cnt[0] + cnt[1];
  } else {
    over_positions(N, [&](int64_t i, int k) { sum[k] = sum[k] + a.x_at(i); });
  }
  const Vec mu = kMasked ? (sum[0] + sum[1]) / at::vec::maximum(n, one) : (sum[0] + sum[1]) * Vec(T(1) / T(N));
  Vec sq[2] = {zero, zero};
  over_positions(N, [&](int64_t i, int k) {
    Vec dx = a.x_at(i) - mu;
    if constexpr (kMasked) dx = Vec::blendv(zero, dx, g.valid(i) > zero);
    sq[k] = at::vec::fmadd(dx, dx, sq[k]);
  });
  const Vec v = kMasked ? (sq[0] + sq[1]) / at::vec::maximum(n - one, one) + Vec(eps)
                        : at::vec::fmadd(sq[0] + sq[1], Vec(T(1) / T(std::max<int64_t>(N - 1, 1))), Vec(eps));
  const Vec inv_v = one / v;
  const Vec alpha = (zero - g.A) * inv_v, mub = mu + g.b;
  // log p = alpha d^2 + top with d = x - mu - b and top = -R / v - K; since
  // alpha d^2 <= 0 the log-sum-exp needs no shift beyond top
  Vec st[2] = {zero, zero};
  over_positions(N, [&](int64_t i, int k) {
    const Vec d = a.x_at(i) - mub;
    Vec t = vexp(alpha * d * d);
    if constexpr (kMasked) t = Vec::blendv(zero, t, g.valid(i) > zero);
    a.put_w(i, t);
    st[k] = st[k] + t;
  });
  Vec sumt = st[0] + st[1];
  Vec shift = zero;
  const Vec low = (sumt < Vec(kUnderflow<T>)) & (n > zero);
  if (C10_UNLIKELY(any_lane(low, c))) {
    // A slice's sum is tiny or 0 although it has valid positions (small c,
    // many Gaussians): shift those slices by their largest alpha d^2, so that
    // their largest term is exactly exp(0) = 1.
    Vec top = minus_inf;
    for (int64_t i = 0; i < N; i++) {
      const Vec d = a.x_at(i) - mub;
      Vec e = alpha * d * d;
      if constexpr (kMasked) e = Vec::blendv(minus_inf, e, g.valid(i) > zero);
      top = at::vec::maximum(top, e);
    }
    shift = Vec::blendv(zero, top, low & (top > minus_inf));
    sumt = zero;
    for (int64_t i = 0; i < N; i++) {
      const Vec d = a.x_at(i) - mub;
      Vec t = vexp(alpha * d * d - shift);
      if constexpr (kMasked) t = Vec::blendv(zero, t, g.valid(i) > zero);
      a.put_w(i, t);
      sumt = sumt + t;
    }
  }
  // w = t exp(top + shift - max(logsumexp, log eps)) with logsumexp = top +
  // shift + log sum. With r = log eps - top - shift the clamp is inactive
  // when sum > exp(r), and then w = t / sum; else w = t exp(-r).
  const Vec r = Vec(log_eps) - (shift - g.K - g.R * inv_v);
  const Vec e = vexp(zero - r.abs());  // exp(-|r|)
  const Vec rpos = r > zero;
  const Vec active = Vec::blendv(sumt > e, sumt * e > one, rpos);  // the clamp is inactive
  Vec scale = Vec::blendv(Vec::blendv(one / e, e, rpos), one / sumt, active);
  scale = Vec::blendv(scale, zero, sumt == zero);
  store(mu, g.mean, c);
  store(v, g.var, c);
  store(shift, g.shift, c);
  store(Vec::blendv(zero - scale, scale, active), g.scale, c);  // < 0: the clamp is active
  const bool keep_w = a.keep_w;
  for (int64_t i = 0; i < N; i++) {
    const Vec xi = a.x_at(i), wq = a.w_at(i) * scale;
    Vec o;
    if constexpr (kMasked) {
      const Vec ok = g.valid(i) > zero;
      o = Vec::blendv(xi, at::vec::fmadd(Vec::blendv(zero, xi, ok), wq, xi * keep_x), ok);  // invalid: x unchanged
    } else {
      o = at::vec::fmadd(xi, wq, xi * keep_x);
    }
    if (keep_w) a.put_w(i, wq);
    a.put_out(i, o);
  }
}

// dL/dx (into a's out, unless need_gx is false) for one vector of slices, and
// each lane's share of the head sums: (S2 / v, S0 / v, S0, gmu) in sums[0..3].
// The derivation is in functional._GaussianProduct.backward.
template <typename T, bool kMasked, int kN, typename Data>
C10_ALWAYS_INLINE void backward_core(const Lanes<T>& g, Data& a, int64_t n_positions, bool residual, bool need_gx,
                                     Vectorized<T> sums[4]) {
  using Vec = Vectorized<T>;
  const int64_t N = kN > 0 ? kN : n_positions;
  const int64_t c = g.count;
  const Vec zero(T(0)), one(T(1)), keep_g(residual ? T(1) : T(0));
  const Vec v = load(g.var, c), signed_scale = load(g.scale, c), inv_v = one / v;
  const Vec mub = load(g.mean, c) + g.b, alpha = (zero - g.A) * inv_v, shift = load(g.shift, c);
  const Vec sc = signed_scale.abs(), inactive = signed_scale > zero;  // inactive: the clamp is
  // S = sum of u = dL/dw * w = gout x w (w is 0 at invalid positions)
  Vec n = Vec(T(N)), Sk[2] = {zero, zero}, cnt[2] = {zero, zero};
  over_positions(N, [&](int64_t i, int k) {
    const Vec xi = a.x_at(i), d = xi - mub;
    Vec wi = vexp(alpha * d * d - shift) * sc, xz = xi;
    if constexpr (kMasked) {
      const Vec m = g.valid(i);
      cnt[k] = cnt[k] + m;
      wi = Vec::blendv(zero, wi, m > zero);
      xz = Vec::blendv(zero, xi, m > zero);
    }
    a.put_w(i, wi);
    Sk[k] = at::vec::fmadd(a.g_at(i) * wi, xz, Sk[k]);
  });
  if constexpr (kMasked) n = cnt[0] + cnt[1];
  const Vec S = Sk[0] + Sk[1];
  // ge = dL/d(log p) = w (gout x - c0), with c0 = S where the clamp is inactive, else 0
  const Vec c0 = Vec::blendv(zero, S, inactive);
  Vec S1k[2] = {zero, zero}, S2k[2] = {zero, zero};
  over_positions(N, [&](int64_t i, int k) {
    const Vec xi = a.x_at(i);
    Vec xz = xi, d = xi - mub;
    if constexpr (kMasked) {
      const Vec ok = g.valid(i) > zero;
      xz = Vec::blendv(zero, xi, ok);
      d = Vec::blendv(zero, d, ok);
    }
    const Vec ged = (a.g_at(i) * xz - c0) * a.w_at(i) * d;
    S1k[k] = S1k[k] + ged;
    S2k[k] = at::vec::fmadd(ged, d, S2k[k]);
  });
  const Vec S1 = S1k[0] + S1k[1], S2 = S2k[0] + S2k[1];
  const Vec S0 = Vec::blendv(S, zero, inactive), two_alpha = alpha + alpha;
  const Vec gv = (g.A * S2 + g.R * S0) * inv_v * inv_v;  // dL/dv
  const Vec gmu = (zero - two_alpha) * S1;                 // dL/dmu per slice, also dL/db
  Vec beta1;
  if constexpr (kMasked) {
    beta1 = Vec::blendv(zero, gv * Vec(T(2)) / at::vec::maximum(n - one, one), n > one);
  } else {
    beta1 = N > 1 ? gv * Vec(T(2) / T(N - 1)) : zero;
  }
  const Vec beta0 = at::vec::fmadd(beta1, g.b, kMasked ? gmu / at::vec::maximum(n, one) : gmu * Vec(T(1) / T(N)));
  sums[0] = S2 * inv_v, sums[1] = S0 * inv_v, sums[2] = S0, sums[3] = gmu;
  if (!need_gx) return;
  // gx = gout w + 2 alpha ge d + beta1 d + beta0 (+ gout); gout at invalid positions
  for (int64_t i = 0; i < N; i++) {
    const Vec xi = a.x_at(i), gi = a.g_at(i), wi = a.w_at(i);
    Vec xz = xi, ok;
    if constexpr (kMasked) {
      ok = g.valid(i) > zero;
      xz = Vec::blendv(zero, xi, ok);
    }
    const Vec d = xz - mub;
    const Vec ge = (gi * xz - c0) * wi;
    Vec r = at::vec::fmadd(two_alpha * ge + beta1, d, at::vec::fmadd(gi, wi + keep_g, beta0));
    if constexpr (kMasked) r = Vec::blendv(gi, r, ok);
    a.put_out(i, r);
  }
}

// forward_core / backward_core on data in memory, with N fixed at compile time where it is 8 or 16 (no mask).
template <typename T, bool kMasked>
GAA_FLATTEN void forward_vector(const Lanes<T>& g, InMemory<T>& a, int64_t N, T eps, T log_eps, bool residual) {
  if constexpr (!kMasked) {
    if (N == 8) return forward_core<T, false, 8>(g, a, N, eps, log_eps, residual);
    if (N == 16) return forward_core<T, false, 16>(g, a, N, eps, log_eps, residual);
  }
  forward_core<T, kMasked, 0>(g, a, N, eps, log_eps, residual);
}

template <typename T, bool kMasked>
GAA_FLATTEN void backward_vector(const Lanes<T>& g, InMemory<T>& a, int64_t N, bool residual, bool need_gx, Vectorized<T> sums[4]) {
  if constexpr (!kMasked) {
    if (N == 8) return backward_core<T, false, 8>(g, a, N, residual, need_gx, sums);
    if (N == 16) return backward_core<T, false, 16>(g, a, N, residual, need_gx, sums);
  }
  backward_core<T, kMasked, 0>(g, a, N, residual, need_gx, sums);
}

// -------------------------------------------------------------- layouts

// One layer's geometry and data.
template <typename T>
struct Layer {
  int64_t P, H, N, Q;
  const T* mask;  // (Pm, H, N, Qm) or null
  int64_t Pm, Qm;
  Heads<T> heads;
};

// Three ways through a layer:
//   kInPlace   Q > 1: the lanes are neighbouring q, read where they are;
//   kTiles     Q == 1: up to 64 slices transposed into a position-major tile;
//   kRegisters Q == 1, N of 8 or 16, float32, 8 lanes, no mask: 8 slices at
//              a time in a block on the stack, N known at compile time.
enum class Path { kInPlace, kTiles, kRegisters };

// How a layer's work is cut: `items` groups of `lanes` slices, `per_chunk` to a chunk.
struct Plan {
  Path path;
  int64_t lanes;  // slices per item: along q (in place), per tile, or per register block
  int64_t per_q;  // items per (p, h), in place
  int64_t items, per_chunk, chunks;
};

template <typename T>
Plan plan_of(const Layer<T>& ly) {
  constexpr int64_t V = Vectorized<T>::size();
  Plan pl{};
  pl.per_q = 1;
  if (ly.Q > 1) {
    pl.path = Path::kInPlace;
    pl.lanes = kTile;
    pl.per_q = (ly.Q + kTile - 1) / kTile;
  } else if (std::is_same_v<T, float> && V == 8 && ly.mask == nullptr && (ly.N == 8 || ly.N == 16)) {
    pl.path = Path::kRegisters;
    pl.lanes = V;
  } else {
    pl.path = Path::kTiles;
    const int64_t fit = std::max<int64_t>(V, (kTileElems / std::max<int64_t>(ly.N, 1)) / V * V);
    pl.lanes = std::min<int64_t>(kTile, fit);
  }
  pl.items = ly.Q > 1 ? ly.P * ly.H * pl.per_q : (ly.P * ly.H + pl.lanes - 1) / pl.lanes;
  pl.per_chunk = std::max<int64_t>(1, kChunk / std::max<int64_t>(1, ly.N * pl.lanes));
  pl.chunks = (pl.items + pl.per_chunk - 1) / pl.per_chunk;
  return pl;
}

// Q == 1: consecutive slices cycle through the heads, so the lanes of an item
// whose first slice is of head h0 have the coefficients at [h0][k][lane].
template <typename T>
struct Cycle {
  int64_t lanes = 0;
  std::vector<T> table;

  Cycle(const Layer<T>& ly, const Plan& pl) {
    if (ly.Q > 1) return;
    lanes = pl.lanes;
    table.resize(ly.H * 4 * lanes);
    const T* coef[4] = {ly.heads.A.data(), ly.heads.b.data(), ly.heads.R.data(), ly.heads.K.data()};
    for (int64_t h0 = 0; h0 < ly.H; h0++)
      for (int k = 0; k < 4; k++)
        for (int64_t l = 0; l < lanes; l++) table[(h0 * 4 + k) * lanes + l] = coef[k][(h0 + l) % ly.H];
  }
  const T* at(int64_t h0, int k) const { return table.data() + (h0 * 4 + k) * lanes; }
};

// The vector of lanes [v0, v0 + count) of item t: statistics, coefficients and
// mask. On the in-place path `offset` is set to the data offset of lane v0 and
// `head` to the item's head; on the others the caller addresses the tile.
template <typename T>
C10_ALWAYS_INLINE Lanes<T> lanes_of(const Layer<T>& ly, const Plan& pl, const Cycle<T>& cy, int64_t t, int64_t v0, T* stats,
                  const T* tile_mask, int64_t* offset, int64_t* head) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t S = ly.P * ly.H * ly.Q;
  Lanes<T> g{};
  int64_t k;
  if (pl.path == Path::kInPlace) {
    const int64_t ph = pl.per_q == 1 ? t : t / pl.per_q, q0 = (t - ph * pl.per_q) * kTile;
    const int64_t h = mod_heads(ph, ly.H), p = (ph - h) / ly.H;
    g.count = std::min(V, std::min(kTile, ly.Q - q0) - v0);
    g.A = Vec(ly.heads.A[h]), g.b = Vec(ly.heads.b[h]), g.R = Vec(ly.heads.R[h]), g.K = Vec(ly.heads.K[h]);
    g.mask_stride = ly.Qm;
    g.mask_per_lane = ly.Qm > 1;
    g.mask = ly.mask ? ly.mask + ((ly.Pm > 1 ? p : 0) * ly.H + h) * ly.N * ly.Qm + (ly.Qm > 1 ? q0 + v0 : 0) : nullptr;
    k = ph * ly.Q + q0 + v0;
    *offset = ph * ly.N * ly.Q + q0 + v0;
    *head = h;
  } else {
    const int64_t s0 = t * pl.lanes, h0 = mod_heads(s0, ly.H);
    g.count = std::min(V, std::min(pl.lanes, ly.P * ly.H - s0) - v0);
    g.A = load(cy.at(h0, 0) + v0, g.count), g.b = load(cy.at(h0, 1) + v0, g.count);
    g.R = load(cy.at(h0, 2) + v0, g.count), g.K = load(cy.at(h0, 3) + v0, g.count);
    g.mask_stride = pl.lanes;
    g.mask_per_lane = true;
    g.mask = tile_mask ? tile_mask + v0 : nullptr;
    k = s0 + v0;
    *offset = v0;
    *head = mod_heads(h0 + v0, ly.H);  // of the first lane; the next lanes follow cyclically
  }
  g.mean = stats + k, g.var = stats + S + k, g.shift = stats + 2 * S + k, g.scale = stats + 3 * S + k;
  return g;
}

// dst[i * ld + l] = src[l * N + i] for l < L, i < N (8 x 8 blocks where they fit).
template <typename T>
void rows_to_tile(const T* src, int64_t L, int64_t N, T* dst, int64_t ld) {
  if constexpr (std::is_same_v<T, float>) {
    if (L % 8 == 0 && N % 8 == 0) {
      for (int64_t l = 0; l < L; l += 8)
        for (int64_t i = 0; i < N; i += 8) at::vec::transpose_mxn<float, 8, 8>(src + l * N + i, N, dst + i * ld + l, ld);
      return;
    }
  }
  for (int64_t l = 0; l < L; l++)
    for (int64_t i = 0; i < N; i++) dst[i * ld + l] = src[l * N + i];
}

// The inverse: dst[l * N + i] = src[i * ld + l].
template <typename T>
void tile_to_rows(const T* src, int64_t ld, int64_t L, int64_t N, T* dst) {
  if constexpr (std::is_same_v<T, float>) {
    if (L % 8 == 0 && N % 8 == 0) {
      for (int64_t i = 0; i < N; i += 8)
        for (int64_t l = 0; l < L; l += 8) at::vec::transpose_mxn<float, 8, 8>(src + i * ld + l, ld, dst + l * N + i, N);
      return;
    }
  }
  for (int64_t l = 0; l < L; l++)
    for (int64_t i = 0; i < N; i++) dst[l * N + i] = src[i * ld + l];
}

// dst[i * dst_stride + l] = src[i * src_stride + l] for i < N, l < count.
template <typename T>
void copy_lanes(const T* src, int64_t src_stride, T* dst, int64_t dst_stride, int64_t N, int64_t count) {
  for (int64_t i = 0; i < N; i++) std::copy(src + i * src_stride, src + i * src_stride + count, dst + i * dst_stride);
}

// The mask of tile t, transposed: dst[i * TL + l] for slice s0 + l.
template <typename T>
void mask_tile(const Layer<T>& ly, const Plan& pl, int64_t t, T* dst) {
  const int64_t s0 = t * pl.lanes, lanes = std::min(pl.lanes, ly.P * ly.H - s0);
  for (int64_t l = 0; l < lanes; l++) {
    const int64_t sl = s0 + l, row = (ly.Pm > 1 ? sl : sl % ly.H) * ly.N;
    for (int64_t i = 0; i < ly.N; i++) dst[i * pl.lanes + l] = ly.mask[row + i];
  }
}

// The `lanes` (<= V) rows of kN values at src into the block dst (lane l =
// row l), through 8 x 8 transposes where float32 has 8 lanes.
template <typename T, int kN>
C10_ALWAYS_INLINE void rows_in(const T* src, int64_t lanes, T* dst) {
  constexpr int64_t V = Vectorized<T>::size();
  if (lanes == V) {
    if constexpr (std::is_same_v<T, float> && V == 8 && kN % 8 == 0) {
      for (int64_t i = 0; i < kN; i += 8) at::vec::transpose_mxn<float, 8, 8>(src + i, kN, dst + i * V, V);
    } else {
      rows_to_tile(src, V, kN, dst, V);
    }
  } else {  // a last, partial block: zeros in the missing lanes
    std::fill(dst, dst + kN * V, T(0));
    for (int64_t l = 0; l < lanes; l++)
      for (int64_t i = 0; i < kN; i++) dst[i * V + l] = src[l * kN + i];
  }
}

// The inverse of rows_in.
template <typename T, int kN>
C10_ALWAYS_INLINE void rows_out(const T* src, int64_t lanes, T* dst) {
  constexpr int64_t V = Vectorized<T>::size();
  if (lanes == V) {
    if constexpr (std::is_same_v<T, float> && V == 8 && kN % 8 == 0) {
      for (int64_t i = 0; i < kN; i += 8) at::vec::transpose_mxn<float, 8, 8>(src + i * V, V, dst + i, kN);
    } else {
      tile_to_rows(src, V, V, kN, dst);
    }
  } else {
    for (int64_t l = 0; l < lanes; l++)
      for (int64_t i = 0; i < kN; i++) dst[l * kN + i] = src[i * V + l];
  }
}

template <typename T, int kN>
GAA_FLATTEN void forward_registers(const Layer<T>& ly, const Plan& pl, const Cycle<T>& cy, int64_t t, const T* x, T* out, T* w,
                       T* stats, T eps, T log_eps, bool residual) {
  int64_t offset, head;
  const Lanes<T> g = lanes_of(ly, pl, cy, t, 0, stats, static_cast<const T*>(nullptr), &offset, &head);
  const int64_t at = t * pl.lanes * kN;
  OnStack<T, kN> a;
  a.keep_w = w != nullptr;
  rows_in<T, kN>(x + at, g.count, a.x);
  forward_core<T, false, kN>(g, a, kN, eps, log_eps, residual);
  rows_out<T, kN>(a.x, g.count, out + at);
  if (w) rows_out<T, kN>(a.w, g.count, w + at);
}

template <typename T, int kN>
GAA_FLATTEN void backward_registers(const Layer<T>& ly, const Plan& pl, const Cycle<T>& cy, int64_t t, const T* gout,
                        const T* x, T* gx, T* stats, bool residual, Vectorized<T> sums[4]) {
  int64_t offset, head;
  const Lanes<T> g = lanes_of(ly, pl, cy, t, 0, stats, static_cast<const T*>(nullptr), &offset, &head);
  const int64_t at = t * pl.lanes * kN;
  OnStack<T, kN> a;
  a.keep_w = false;
  rows_in<T, kN>(x + at, g.count, a.x);
  rows_in<T, kN>(gout + at, g.count, a.g);
  backward_core<T, false, kN>(g, a, kN, residual, gx != nullptr, sums);
  if (gx) rows_out<T, kN>(a.x, g.count, gx + at);
}

template <typename T>
void forward_layer(const Layer<T>& ly, const T* x, T* out, T* w, T* stats, T eps, bool residual) {
  constexpr int64_t V = Vectorized<T>::size();
  const Plan pl = plan_of(ly);
  const Cycle<T> cy(ly, pl);
  const T log_eps = eps > 0 ? T(std::log(static_cast<double>(eps))) : -std::numeric_limits<T>::infinity();
  const int64_t N = ly.N;
  at::parallel_for(0, pl.chunks, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    const bool tiled = pl.path == Path::kTiles;
    std::vector<T> xt(tiled ? N * pl.lanes : 0), ot(xt.size()), wt(w ? xt.size() : 0), mt(ly.mask && tiled ? xt.size() : 0);
    std::vector<T> pad(tiled ? 0 : N * V), pad_w(pad.size()), pad_o(pad.size());
    for (int64_t t = begin * pl.per_chunk; t < std::min(end * pl.per_chunk, pl.items); t++) {
      if (pl.path == Path::kRegisters) {
        if (N == 8) forward_registers<T, 8>(ly, pl, cy, t, x, out, w, stats, eps, log_eps, residual);
        else forward_registers<T, 16>(ly, pl, cy, t, x, out, w, stats, eps, log_eps, residual);
        continue;
      }
      const int64_t s0 = t * pl.lanes, lanes = tiled ? std::min(pl.lanes, ly.P * ly.H - s0) : 0;
      if (tiled) {
        rows_to_tile(x + s0 * N, lanes, N, xt.data(), pl.lanes);
        if (ly.mask) mask_tile(ly, pl, t, mt.data());
      }
      const int64_t width = tiled ? lanes : std::min(kTile, ly.Q - (t % pl.per_q) * kTile);
      for (int64_t v0 = 0; v0 < width; v0 += V) {
        int64_t off, head;
        const Lanes<T> g = lanes_of(ly, pl, cy, t, v0, stats, ly.mask && tiled ? static_cast<const T*>(mt.data()) : nullptr, &off, &head);
        const bool partial = !tiled && g.count < V;  // the last lanes of a row: through padded copies
        if (partial) copy_lanes(x + off, ly.Q, pad.data(), V, N, g.count);
        InMemory<T> a;
        if (tiled) {
          a = {xt.data() + off, nullptr, (w ? wt.data() : ot.data()) + off, ot.data() + off, pl.lanes, pl.lanes, w != nullptr};
        } else if (partial) {
          a = {pad.data(), nullptr, pad_w.data(), pad_o.data(), V, V, w != nullptr};
        } else {
          a = {x + off, nullptr, (w ? w : out) + off, out + off, ly.Q, ly.Q, w != nullptr};
        }
        if (ly.mask) forward_vector<T, true>(g, a, N, eps, log_eps, residual);
        else forward_vector<T, false>(g, a, N, eps, log_eps, residual);
        if (partial) {
          copy_lanes(pad_o.data(), V, out + off, ly.Q, N, g.count);
          if (w) copy_lanes(pad_w.data(), V, w + off, ly.Q, N, g.count);
        }
      }
      if (tiled) {
        tile_to_rows(ot.data(), pl.lanes, lanes, N, out + s0 * N);
        if (w) tile_to_rows(wt.data(), pl.lanes, lanes, N, w + s0 * N);
      }
    }
  });
}

// gx (when not null) and dL/dm, dL/dc of one layer.
template <typename T>
void backward_layer(const Layer<T>& ly, const T* gout, const T* x, const T* stats_in, T* gx, const T* m, const T* c,
                    int64_t G, T* gm, T* gc, bool residual) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Plan pl = plan_of(ly);
  const Cycle<T> cy(ly, pl);
  const int64_t N = ly.N, H = ly.H;
  T* stats = const_cast<T*>(stats_in);  // only read: Lanes is shared with the forward
  std::vector<double> acc(pl.chunks * 4 * H, 0.0);  // per chunk, so that the sum's order is fixed
  at::parallel_for(0, pl.chunks, 1, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    const bool tiled = pl.path == Path::kTiles;
    std::vector<T> scratch(N * V), gt(tiled ? N * pl.lanes : 0), xt(gt.size()), gxt(gx ? gt.size() : 0),
        mt(ly.mask && tiled ? gt.size() : 0);
    std::vector<T> pad(tiled ? 0 : N * V), pad_g(pad.size()), pad_o(pad.size());
    T lane_sums[4][V];
    Vec sums[4];
    // adds each lane's share to its head's sums
    auto add = [&](double* into, int64_t count, int64_t head, bool same_head) {
      for (int j = 0; j < 4; j++) sums[j].store(lane_sums[j]);
      for (int64_t l = 0, h = head; l < count; l++, h = same_head ? h : (h + 1 == H ? 0 : h + 1))
        for (int j = 0; j < 4; j++) into[4 * h + j] += double(lane_sums[j][l]);
    };
    for (int64_t ci = begin; ci < end; ci++) {
      double* mine = acc.data() + ci * 4 * H;
      for (int64_t t = ci * pl.per_chunk; t < std::min((ci + 1) * pl.per_chunk, pl.items); t++) {
        if (pl.path == Path::kRegisters) {
          if (N == 8) backward_registers<T, 8>(ly, pl, cy, t, gout, x, gx, stats, residual, sums);
          else backward_registers<T, 16>(ly, pl, cy, t, gout, x, gx, stats, residual, sums);
          const int64_t s0 = t * pl.lanes;
          add(mine, std::min(pl.lanes, ly.P * H - s0), mod_heads(s0, H), false);
          continue;
        }
        const int64_t s0 = t * pl.lanes, lanes = tiled ? std::min(pl.lanes, ly.P * H - s0) : 0;
        if (tiled) {
          rows_to_tile(gout + s0 * N, lanes, N, gt.data(), pl.lanes);
          rows_to_tile(x + s0 * N, lanes, N, xt.data(), pl.lanes);
          if (ly.mask) mask_tile(ly, pl, t, mt.data());
        }
        const int64_t width = tiled ? lanes : std::min(kTile, ly.Q - (t % pl.per_q) * kTile);
        for (int64_t v0 = 0; v0 < width; v0 += V) {
          int64_t off, head;
          const Lanes<T> g = lanes_of(ly, pl, cy, t, v0, stats, ly.mask && tiled ? static_cast<const T*>(mt.data()) : nullptr, &off, &head);
          // the weights go to a scratch of N vectors (stride V)
          const bool partial = !tiled && g.count < V;  // the last lanes of a row: through padded copies
          if (partial) {
            copy_lanes(x + off, ly.Q, pad.data(), V, N, g.count);
            copy_lanes(gout + off, ly.Q, pad_g.data(), V, N, g.count);
          }
          InMemory<T> a;
          if (tiled) {
            a = {xt.data() + off, gt.data() + off, scratch.data(), gx ? gxt.data() + off : nullptr, pl.lanes, V, false};
          } else if (partial) {
            a = {pad.data(), pad_g.data(), scratch.data(), pad_o.data(), V, V, false};
          } else {
            a = {x + off, gout + off, scratch.data(), gx ? gx + off : nullptr, ly.Q, V, false};
          }
          if (ly.mask) backward_vector<T, true>(g, a, N, residual, gx != nullptr, sums);
          else backward_vector<T, false>(g, a, N, residual, gx != nullptr, sums);
          if (partial && gx) copy_lanes(pad_o.data(), V, gx + off, ly.Q, N, g.count);
          add(mine, g.count, head, !tiled);
        }
        if (tiled && gx) tile_to_rows(gxt.data(), pl.lanes, lanes, N, gx + s0 * N);
      }
    }
  });
  for (int64_t ci = 1; ci < pl.chunks; ci++)
    for (int64_t j = 0; j < 4 * H; j++) acc[j] += acc[ci * 4 * H + j];
  head_gradients(m, c, H, G, acc.data(), gm, gc);
}

// ------------------------------------------------------------------ the ops

// layers = (axis, heads, residual) per layer; the layer sees x as (P, H, N, Q).
struct Spec {
  int64_t axis, H, P, L, Q;
  bool residual;
};

Spec spec_of(const Tensor& x, at::IntArrayRef layers, int64_t l) {
  TORCH_CHECK(layers.size() % 3 == 0, "gaussian_adaptive_attention: layers must hold (axis, heads, residual) per layer");
  Spec sp{layers[3 * l], layers[3 * l + 1], 1, 1, 1, layers[3 * l + 2] != 0};
  TORCH_CHECK(sp.axis >= 0 && sp.axis < x.dim(), "gaussian_adaptive_attention: axis ", sp.axis, " out of range");
  for (int64_t d = 0; d < sp.axis; d++) sp.P *= x.size(d);
  for (int64_t d = sp.axis + 1; d < x.dim(); d++) sp.Q *= x.size(d);
  sp.L = x.size(sp.axis);
  TORCH_CHECK(sp.H > 0 && sp.L % sp.H == 0, "gaussian_adaptive_attention: the axis (", sp.L,
              ") must split evenly into ", sp.H, " heads");
  return sp;
}

void check_inputs(const Tensor& x, at::TensorList params, const OptionalTensors& masks, at::IntArrayRef layers) {
  const int64_t n = static_cast<int64_t>(layers.size() / 3);
  TORCH_CHECK(x.device().is_cpu(), "gaussian_adaptive_attention: the fused kernels run on the CPU only");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "gaussian_adaptive_attention: the fused kernels take float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(static_cast<int64_t>(params.size()) == 2 * n && static_cast<int64_t>(masks.size()) == n,
              "gaussian_adaptive_attention: expected two parameters and one mask per layer");
  for (int64_t l = 0; l < n; l++) {
    const Spec sp = spec_of(x, layers, l);
    for (int j = 0; j < 2; j++) {
      const Tensor& p = params[2 * l + j];
      TORCH_CHECK(p.dim() == 2 && p.size(0) == sp.H && p.scalar_type() == x.scalar_type() && p.device().is_cpu(),
                  "gaussian_adaptive_attention: layer ", l, " expects (heads, gaussians) parameters in x's dtype");
    }
    TORCH_CHECK(params[2 * l].sizes() == params[2 * l + 1].sizes(), "gaussian_adaptive_attention: offsets and scales differ in shape");
    const std::optional<Tensor> m = masks.get(l);
    if (m.has_value() && m->defined()) {
      TORCH_CHECK(m->dim() == 3 && m->size(1) == sp.L && (m->size(0) == 1 || m->size(0) == sp.P) &&
                      (m->size(2) == 1 || m->size(2) == sp.Q) && m->scalar_type() == x.scalar_type(),
                  "gaussian_adaptive_attention: layer ", l, "'s mask must be (1 or P, L, 1 or Q) in x's dtype");
    }
  }
}

template <typename T>
Layer<T> layer_of(const Spec& sp, const Tensor& m, const Tensor& c, const Tensor& mask) {
  Layer<T> ly{sp.P, sp.H, sp.L / sp.H, sp.Q, nullptr, 1, 1,
              head_coefficients(m.data_ptr<T>(), c.data_ptr<T>(), sp.H, m.size(1))};
  if (mask.defined()) ly.mask = mask.data_ptr<T>(), ly.Pm = mask.size(0), ly.Qm = mask.size(2);
  return ly;
}

Tensor mask_at(const OptionalTensors& masks, int64_t l) {
  const std::optional<Tensor> m = masks.get(l);
  return m.has_value() && m->defined() ? m->contiguous() : Tensor();
}

// (out, weights, saved): saved holds the inputs of layers 1.. and every layer's stats.
std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>> block_forward(
    const Tensor& x, at::TensorList params, const OptionalTensors& masks, at::IntArrayRef layers,
    at::ArrayRef<double> eps, bool need_weights) {
  check_inputs(x, params, masks, layers);
  const int64_t n = static_cast<int64_t>(layers.size() / 3);
  TORCH_CHECK(static_cast<int64_t>(eps.size()) == n, "gaussian_adaptive_attention: one eps per layer");
  Tensor h = x.contiguous();
  std::vector<Tensor> ws, inputs, stats;
  for (int64_t l = 0; l < n; l++) {
    const Spec sp = spec_of(x, layers, l);
    const Tensor m = params[2 * l].contiguous(), c = params[2 * l + 1].contiguous(), mask = mask_at(masks, l);
    Tensor out = at::empty_like(h, at::MemoryFormat::Contiguous);
    Tensor w = need_weights ? at::empty_like(h, at::MemoryFormat::Contiguous) : Tensor();
    Tensor st = at::empty({4 * sp.P * sp.H * sp.Q}, h.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gaa_forward", [&] {
      const Layer<scalar_t> ly = layer_of<scalar_t>(sp, m, c, mask);
      forward_layer<scalar_t>(ly, h.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                              w.defined() ? w.data_ptr<scalar_t>() : nullptr, st.data_ptr<scalar_t>(),
                              static_cast<scalar_t>(eps[l]), sp.residual);
    });
    if (need_weights) ws.push_back(w);
    if (l + 1 < n) inputs.push_back(out);
    stats.push_back(st);
    h = out;
  }
  inputs.insert(inputs.end(), stats.begin(), stats.end());
  return {h, ws, inputs};
}

// (dL/dx or an empty tensor, dL/d params).
std::tuple<Tensor, std::vector<Tensor>> block_backward(const Tensor& grad, const Tensor& x, at::TensorList saved,
                                                       at::TensorList params, const OptionalTensors& masks,
                                                       at::IntArrayRef layers, bool need_input_grad) {
  check_inputs(x, params, masks, layers);
  const int64_t n = static_cast<int64_t>(layers.size() / 3);
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == 2 * n - 1, "gaussian_adaptive_attention: saved tensors do not match the layers");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(), "gaussian_adaptive_attention: grad must match x");
  std::vector<Tensor> gparams(2 * n);
  Tensor g = grad.contiguous();
  for (int64_t l = n - 1; l >= 0; l--) {
    const Spec sp = spec_of(x, layers, l);
    const Tensor m = params[2 * l].contiguous(), c = params[2 * l + 1].contiguous(), mask = mask_at(masks, l);
    const Tensor h = l == 0 ? x.contiguous() : saved[l - 1].contiguous();
    const Tensor st = saved[n - 1 + l].contiguous();
    const bool need_gx = l > 0 || need_input_grad;
    Tensor gx = need_gx ? at::empty_like(h, at::MemoryFormat::Contiguous) : Tensor();
    Tensor gm = at::empty_like(m), gc = at::empty_like(c);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gaa_backward", [&] {
      const Layer<scalar_t> ly = layer_of<scalar_t>(sp, m, c, mask);
      backward_layer<scalar_t>(ly, g.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), st.data_ptr<scalar_t>(),
                               gx.defined() ? gx.data_ptr<scalar_t>() : nullptr, m.data_ptr<scalar_t>(),
                               c.data_ptr<scalar_t>(), m.size(1), gm.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                               sp.residual);
    });
    gparams[2 * l] = gm, gparams[2 * l + 1] = gc;
    g = gx;
  }
  return {need_input_grad ? g : at::empty({0}, x.options()), gparams};
}

std::tuple<Tensor, std::vector<Tensor>> block_cpu(const Tensor& x, at::TensorList params, const OptionalTensors& masks,
                                                  at::IntArrayRef layers, at::ArrayRef<double> eps, bool need_weights) {
  auto result = block_forward(x, params, masks, layers, eps, need_weights);
  return {std::get<0>(result), std::get<1>(result)};
}

using BackwardSig = std::tuple<Tensor, std::vector<Tensor>>(const Tensor&, const Tensor&, at::TensorList, at::TensorList,
                                                            const OptionalTensors&, at::IntArrayRef, bool);
using ReferenceSig = std::tuple<Tensor, std::vector<Tensor>>(const Tensor&, const Tensor&, at::TensorList,
                                                             const OptionalTensors&, at::IntArrayRef,
                                                             at::ArrayRef<double>, bool);

class BlockFunction : public torch::autograd::Function<BlockFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                                                at::TensorList params, const OptionalTensors& masks,
                                                const std::vector<int64_t>& layers, const std::vector<double>& eps,
                                                bool need_weights) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("gaussian_adaptive_attention::fused_block_forward", "")
                         .typed<decltype(block_forward)>();
    std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>> result;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      result = op.call(x, params, masks, layers, eps, need_weights);
    }
    auto& [out, ws, saved] = result;
    std::vector<Tensor> inputs{x};
    inputs.insert(inputs.end(), params.begin(), params.end());
    ctx->save_for_backward(inputs);
    ctx->saved_data["saved"] = saved;
    ctx->saved_data["masks"] = masks;
    ctx->saved_data["layers"] = layers;
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable(ws);
    ctx->set_materialize_grads(false);
    torch::autograd::variable_list outputs{out};
    outputs.insert(outputs.end(), ws.begin(), ws.end());
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto inputs = ctx->get_saved_variables();
    const Tensor& x = inputs[0];
    const std::vector<Tensor> params(inputs.begin() + 1, inputs.end());
    // one per argument of forward: x, each parameter, masks, layers, eps, need_weights
    torch::autograd::variable_list result(1 + params.size() + 4);
    if (!grads[0].defined()) return result;
    const bool need_x = ctx->needs_input_grad(0);
    const OptionalTensors masks = ctx->saved_data["masks"].toOptionalTensorList();
    const std::vector<int64_t> layers = ctx->saved_data["layers"].toIntVector();
    std::tuple<Tensor, std::vector<Tensor>> g;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: the gradient must be differentiable itself, so it
      // comes from autograd over the PyTorch formulation (registered in Python).
      static auto ref = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("gaussian_adaptive_attention::fused_block_backward_reference", "")
                            .typed<ReferenceSig>();
      const std::vector<double> eps = ctx->saved_data["eps"].toDoubleVector();
      g = ref.call(grads[0], x, params, masks, layers, eps, need_x);
    } else {
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("gaussian_adaptive_attention::fused_block_backward", "")
                           .typed<BackwardSig>();
      const std::vector<Tensor> saved = ctx->saved_data["saved"].toTensorVector();
      at::AutoDispatchBelowADInplaceOrView guard;
      g = op.call(grads[0], x, saved, params, masks, layers, need_x);
    }
    if (need_x) result[0] = std::get<0>(g);
    for (size_t i = 0; i < params.size(); i++) result[1 + i] = std::get<1>(g)[i];
    return result;
  }
};

std::tuple<Tensor, std::vector<Tensor>> block_autograd(const Tensor& x, at::TensorList params,
                                                       const OptionalTensors& masks, at::IntArrayRef layers,
                                                       at::ArrayRef<double> eps, bool need_weights) {
  auto outputs = BlockFunction::apply(x, params, masks, layers.vec(), eps.vec(), need_weights);
  return {outputs[0], std::vector<Tensor>(outputs.begin() + 1, outputs.end())};
}

}  // namespace
}  // namespace gaa

TORCH_LIBRARY(gaussian_adaptive_attention, m) {
  m.set_python_module("gaussian_adaptive_attention._fused");  // fake implementations, reference backward
  // A chain of product-mode layers, each on the previous one's output; layers
  // holds (axis, heads, residual) per layer and params (offsets, scales) per layer.
  m.def("fused_block(Tensor x, Tensor[] params, Tensor?[] masks, int[] layers, float[] eps, bool need_weights) "
        "-> (Tensor, Tensor[])");
  m.def("fused_block_forward(Tensor x, Tensor[] params, Tensor?[] masks, int[] layers, float[] eps, "
        "bool need_weights) -> (Tensor, Tensor[], Tensor[])");
  m.def("fused_block_backward(Tensor grad, Tensor x, Tensor[] saved, Tensor[] params, Tensor?[] masks, "
        "int[] layers, bool need_input_grad) -> (Tensor, Tensor[])");
  m.def("fused_block_backward_reference(Tensor grad, Tensor x, Tensor[] params, Tensor?[] masks, int[] layers, "
        "float[] eps, bool need_input_grad) -> (Tensor, Tensor[])");
}

TORCH_LIBRARY_IMPL(gaussian_adaptive_attention, CPU, m) {
  m.impl("fused_block", &gaa::block_cpu);
  m.impl("fused_block_forward", &gaa::block_forward);
  m.impl("fused_block_backward", &gaa::block_backward);
}

TORCH_LIBRARY_IMPL(gaussian_adaptive_attention, Autograd, m) {
  m.impl("fused_block", &gaa::block_autograd);
}
