// The time loop of a tanh RNN layer, forward and backward, in float32 for the CPU: the operators
// rnn_lightning::tanh_recurrence and rnn_lightning::tanh_recurrence_backward, registered with PyTorch
// below. cpu_rnn.py builds this file once per CPU kind with torch.utils.cpp_extension and registers
// their autograd and fake (shape) kernels.
//
// The recurrence of each batch row depends on that row only, so each thread takes a block of ROWS rows
// through all T steps: the block's state (ROWS x H) stays in L1 and W_hh in L2, there is one parallel
// region per layer instead of a fork/join per op, and each step's product and tanh are one pass.
// The input projections (one large GEMM before) and the weight gradients (large GEMMs after) stay in
// PyTorch, where oneDNN/MKL run them near peak. The PyTorch headers are the registration's and the
// Tensor's only (no <torch/extension.h>, no pybind11): the build takes about 12 s of CPU time once,
// 10 of them for <torch/library.h>.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <omp.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

// exp(x) for x <= 0 as 2^n * p(r): arithmetic and bit operations only, so the loops calling it vectorize.
inline float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;  // x - n ln 2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&p, &bits, 4);
  return p;
}

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|); for |x| < 2^-12 the quotient's rounding
// is above x's own, and tanh(x) = x to float precision there.
inline float tanh_f(float x) {
  const float a = std::fabs(x);
  const float e = exp_neg(-2.0f * a);
  const float t = (1.0f - e) / (1.0f + e);
  const float y = a < 2.44140625e-4f ? a : t;
  return std::copysign(y, x);
}

// Vectors of the widest float SIMD the compiler targets (built with -march=native): GCC/Clang vector
// extensions, so the same code is AVX-512, AVX2, SSE or NEON.
#if defined(__AVX512F__)
constexpr int VL = 16;
constexpr int TILE_ROWS = 6;  // 6 rows x 4 vectors of accumulators + 4 of weights: 29 of 32 registers
#elif defined(__AVX__)
constexpr int VL = 8;
constexpr int TILE_ROWS = 3;  // 3 x 4 + 4 of 16 registers
#else
constexpr int VL = 4;  // 16-byte registers (SSE, NEON)
constexpr int TILE_ROWS = 3;
#endif
constexpr int64_t ROWS = TILE_ROWS;  // rows per block, taken through all T steps by one thread
typedef float vec __attribute__((vector_size(VL * 4)));
typedef float vec_unaligned __attribute__((vector_size(VL * 4), aligned(4)));  // a vec's view of any float*
inline vec load(const float* p) { return *reinterpret_cast<const vec_unaligned*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<vec_unaligned*>(p) = v; }
constexpr int TILE_COLS = 4 * VL;

// acc (R x H, row stride H) += h (R x H, row stride H) @ w (H x H, row-major, rows indexed by h's
// columns), for H a multiple of TILE_COLS: accumulators for R x TILE_COLS outputs live in registers.
template <int R>
inline void add_product_tile(float* __restrict acc, const float* __restrict h, const float* __restrict w, int64_t H) {
  for (int64_t c = 0; c < H; c += TILE_COLS) {
    vec a[R][4];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < 4; ++v) a[r][v] = load(acc + r * H + c + v * VL);
    for (int64_t k = 0; k < H; ++k) {
      vec wv[4];
      for (int v = 0; v < 4; ++v) wv[v] = load(w + k * H + c + v * VL);
      for (int r = 0; r < R; ++r) {
        const float hk = h[r * H + k];
        for (int v = 0; v < 4; ++v) a[r][v] += hk * wv[v];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < 4; ++v) store(acc + r * H + c + v * VL, a[r][v]);
  }
}

// The same for any H (the loop over j vectorizes; accumulators go through L1).
inline void add_product_any(float* __restrict acc, const float* __restrict h, const float* __restrict w,
                            int64_t rows, int64_t H) {
  for (int64_t k = 0; k < H; ++k) {
    const float* wk = w + k * H;
    for (int64_t r = 0; r < rows; ++r) {
      const float hk = h[r * H + k];
      float* a = acc + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) a[j] += hk * wk[j];
    }
  }
}

// acc (rows x H) += h (rows x H) @ w, rows <= TILE_ROWS.
inline void add_product(float* __restrict acc, const float* __restrict h, const float* __restrict w,
                        int64_t rows, int64_t H) {
  if (H % TILE_COLS) return add_product_any(acc, h, w, rows, H);
  switch (rows) {
    case 1: return add_product_tile<1>(acc, h, w, H);
    case 2: return add_product_tile<2>(acc, h, w, H);
    case 3: return add_product_tile<3>(acc, h, w, H);
#if defined(__AVX512F__)
    case 4: return add_product_tile<4>(acc, h, w, H);
    case 5: return add_product_tile<5>(acc, h, w, H);
    case 6: return add_product_tile<6>(acc, h, w, H);
#endif
  }
}

// gi (T, B, H): the input projections without bias; bias (H): both biases summed; wt (H, H) = w_hh^T,
// row-major. Writes hs (T + 1, B, H): hs[0] = 0, hs[t + 1] = tanh(gi[t] + bias + hs[t] @ wt).
void tanh_forward(const float* gi, const float* bias, const float* wt, float* hs, int64_t T, int64_t B, int64_t H,
                  int threads) {
  std::memset(hs, 0, sizeof(float) * B * H);
  const int64_t blocks = (B + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t b0 = blk * ROWS, rows = std::min(ROWS, B - b0), n = rows * H;
    for (int64_t t = 0; t < T; ++t) {
      float* out = hs + ((t + 1) * B + b0) * H;
      const float* g = gi + (t * B + b0) * H;
      for (int64_t r = 0; r < rows; ++r)
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) out[r * H + j] = g[r * H + j] + bias[j];
      add_product(out, hs + (t * B + b0) * H, wt, rows, H);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) out[i] = tanh_f(out[i]);
    }
  }
}

// hs from tanh_forward; gout: the outputs' gradient, (T, B, H), or (B, H) for the last state only
// (last_only); w (H, H) = w_hh, row-major. Writes dz (T, B, H), the gradient of each step's
// pre-activation gi[t] + bias + hs[t] @ w_hh^T, and dbias (H), its sum over all steps and rows.
void tanh_backward(const float* hs, const float* gout, int last_only, const float* w, float* dz, float* dbias,
                   int64_t T, int64_t B, int64_t H, int threads) {
  const int64_t blocks = (B + ROWS - 1) / ROWS;
  // One partial bias sum per thread, added in thread order: the same result on every run.
  std::vector<float> partial(static_cast<size_t>(threads) * H, 0.0f);
  int used = 1;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> dh_buf(ROWS * H);
    float* dh = dh_buf.data();
    float* db = partial.data() + static_cast<int64_t>(omp_get_thread_num()) * H;
#pragma omp single
    used = omp_get_num_threads();
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t b0 = blk * ROWS, rows = std::min(ROWS, B - b0), n = rows * H;
      std::memcpy(dh, gout + ((last_only ? 0 : (T - 1) * B) + b0) * H, sizeof(float) * n);
      for (int64_t t = T - 1; t >= 0; --t) {
        const float* h = hs + ((t + 1) * B + b0) * H;
        float* dzt = dz + (t * B + b0) * H;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) dzt[i] = dh[i] * (1.0f - h[i] * h[i]);
        for (int64_t r = 0; r < rows; ++r)
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) db[j] += dzt[r * H + j];
        if (t == 0) break;
        if (last_only) {
          std::memset(dh, 0, sizeof(float) * n);
        } else {
          std::memcpy(dh, gout + ((t - 1) * B + b0) * H, sizeof(float) * n);
        }
        add_product(dh, dzt, w, rows, H);  // dh_prev[k] = gout + sum_j dz[j] w_hh[j][k]
      }
    }
  }
  std::memset(dbias, 0, sizeof(float) * H);
  for (int i = 0; i < used; ++i)
    for (int64_t j = 0; j < H; ++j) dbias[j] += partial[i * H + j];
}

at::Tensor contiguous_float(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name, ": expected a float32 CPU tensor");
  TORCH_CHECK(t.dim() == dim, name, ": expected ", dim, " dimensions, got ", t.dim());
  return t.contiguous();
}

// gi (T, B, H), the input projections without bias; bias (H); w_hh (H, H) ->
// (the final state (B, H), every state hs (T + 1, B, H) with hs[0] = 0).
std::tuple<at::Tensor, at::Tensor> tanh_recurrence(const at::Tensor& gi_, const at::Tensor& bias_,
                                                   const at::Tensor& w_hh) {
  const at::Tensor gi = contiguous_float(gi_, "gi", 3), bias = contiguous_float(bias_, "bias", 1);
  const at::Tensor wt = contiguous_float(w_hh, "w_hh", 2).t().contiguous();
  const int64_t T = gi.size(0), B = gi.size(1), H = gi.size(2);
  TORCH_CHECK(bias.size(0) == H && wt.size(0) == H && wt.size(1) == H, "bias (H) and w_hh (H, H) for gi (T, B, H)");
  at::Tensor hs = gi.new_empty({T + 1, B, H});
  tanh_forward(gi.data_ptr<float>(), bias.data_ptr<float>(), wt.data_ptr<float>(), hs.data_ptr<float>(), T, B, H,
               at::get_num_threads());
  return {hs[T].clone(), hs};
}

// hs from tanh_recurrence; gout the gradient of the outputs hs[1:] (T, B, H), or of the final state only
// (B, H) -> (dz (T, B, H), the gradient of each step's pre-activation; its sum (H), the bias gradient).
std::tuple<at::Tensor, at::Tensor> tanh_recurrence_backward(const at::Tensor& hs_, const at::Tensor& gout_,
                                                            const at::Tensor& w_hh) {
  const at::Tensor hs = contiguous_float(hs_, "hs", 3), w = contiguous_float(w_hh, "w_hh", 2);
  const int64_t T = hs.size(0) - 1, B = hs.size(1), H = hs.size(2);
  const bool last_only = gout_.dim() == 2;
  const at::Tensor gout = contiguous_float(gout_, "gout", last_only ? 2 : 3);
  TORCH_CHECK(gout.size(-1) == H && gout.size(-2) == B && (last_only || gout.size(0) == T),
              "gout: expected (T, B, H) or (B, H) for hs (T + 1, B, H)");
  TORCH_CHECK(w.size(0) == H && w.size(1) == H, "w_hh: expected (H, H) for hs (T + 1, B, H)");
  at::Tensor dz = hs.new_empty({T, B, H}), db = hs.new_empty({H});
  tanh_backward(hs.data_ptr<float>(), gout.data_ptr<float>(), last_only, w.data_ptr<float>(), dz.data_ptr<float>(),
                db.data_ptr<float>(), T, B, H, at::get_num_threads());
  return {dz, db};
}

}  // namespace

TORCH_LIBRARY(rnn_lightning, m) {
  m.def("tanh_recurrence(Tensor gi, Tensor bias, Tensor w_hh) -> (Tensor, Tensor)");
  m.def("tanh_recurrence_backward(Tensor hs, Tensor gout, Tensor w_hh) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnn_lightning, CPU, m) {
  m.impl("tanh_recurrence", &tanh_recurrence);
  m.impl("tanh_recurrence_backward", &tanh_recurrence_backward);
}
