// Fused CPU kernel for attention over gathered candidate keys (band + rare + error keys).
//
// For every (batch b, head h, query t) the C candidates are key positions idx[b,t,c]
// with a kind[b,h,t,c] (the Kind codes of structure.py, same names and values): NOT_ALLOWED,
// SUPPORT (structured support: softmax) or ERROR (error key: weight eps * sigmoid(score), only
// when the row has a support). No T x T tensor; time and
// memory O(B * H * T * C * D). Forward is parallel over (b, h, t), backward over (b, h), so
// every thread owns the rows of dK/dV it writes.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

// structmt.attention.structure.Kind (tests/test_architecture.py checks that the values agree)
enum Kind : int8_t { NOT_ALLOWED = 0, SUPPORT = 1, ERROR = 2 };

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// Weights of one row from its scores: softmax over the support, bounded error keys.
// Returns E (total error weight); fills p (softmax) and w (final weights).
// A row with a support whose scores are all NaN or all -inf is NaN, as torch.softmax's (an fp16
// overflow upstream must reach the loss, not become a quiet all-zero row); only an empty support is zero.
inline float row_weights(const float* s, const int8_t* kind, int64_t C, float eps, float* p, float* w) {
  float m = -std::numeric_limits<float>::infinity();
  bool has = false;
  for (int64_t c = 0; c < C; ++c) {
    if (kind[c] != SUPPORT) continue;
    has = true;
    if (s[c] > m) m = s[c];
  }
  if (!has) {  // empty support: an all-zero row
    for (int64_t c = 0; c < C; ++c) p[c] = w[c] = 0.f;
    return 0.f;
  }
  float z = 0.f, e_total = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    p[c] = kind[c] == SUPPORT ? std::exp(s[c] - m) : 0.f;
    z += p[c];
    if (kind[c] == ERROR) e_total += eps * sigmoid(s[c]);
  }
  for (int64_t c = 0; c < C; ++c) {
    p[c] /= z;
    w[c] = kind[c] == SUPPORT ? p[c] * (1.f - e_total) : (kind[c] == ERROR ? eps * sigmoid(s[c]) : 0.f);
  }
  return e_total;
}

// Every shape, dtype and index the kernels read through raw pointers: a mismatch is an error,
// never a read past a buffer. q (B,H,T,D), k and v (B,H,S,D) float32; idx (B,T,C) int64 in [0,S);
// kind (B,H,T,C) int8.
void check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& idx,
                  const torch::Tensor& kind) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "structmt kernel: q, k, v must be 4-D (B, H, T, D)");
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k.dtype() == torch::kFloat32 && v.dtype() == torch::kFloat32,
              "structmt kernel: q, k, v must be float32");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3) && v.sizes() == k.sizes(),
              "structmt kernel: k and v must be (B, H, S, D) for q (B, H, T, D), got ", q.sizes(), ", ", k.sizes(),
              ", ", v.sizes());
  TORCH_CHECK(idx.dim() == 3 && idx.size(0) == q.size(0) && idx.size(1) == q.size(2) && idx.dtype() == torch::kInt64,
              "structmt kernel: idx must be int64 (B, T, C), got ", idx.dtype(), " ", idx.sizes());
  TORCH_CHECK(kind.dim() == 4 && kind.size(0) == q.size(0) && kind.size(1) == q.size(1) &&
                  kind.size(2) == q.size(2) && kind.size(3) == idx.size(2) && kind.dtype() == torch::kInt8,
              "structmt kernel: kind must be int8 (B, H, T, C), got ", kind.dtype(), " ", kind.sizes());
  TORCH_CHECK(idx.numel() == 0 || (idx.min().item<int64_t>() >= 0 && idx.max().item<int64_t>() < k.size(2)),
              "structmt kernel: idx holds key positions outside [0, S)");
}

}  // namespace

std::vector<torch::Tensor> forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor idx,
                                   torch::Tensor kind, double scale, double eps) {
  check_inputs(q, k, v, idx, kind);
  q = q.contiguous(); k = k.contiguous(); v = v.contiguous(); idx = idx.contiguous(); kind = kind.contiguous();
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), S = k.size(2), C = idx.size(2);
  auto out = torch::zeros_like(q);
  auto scores = torch::empty({B, H, T, C}, q.options());
  auto weights = torch::empty({B, H, T, C}, q.options());
  const float* qp = q.data_ptr<float>(); const float* kp = k.data_ptr<float>(); const float* vp = v.data_ptr<float>();
  const int64_t* ip = idx.data_ptr<int64_t>(); const int8_t* tp = kind.data_ptr<int8_t>();
  float* op = out.data_ptr<float>(); float* sp = scores.data_ptr<float>(); float* wp = weights.data_ptr<float>();
  const float fscale = static_cast<float>(scale), feps = static_cast<float>(eps);
  at::parallel_for(0, B * H * T, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> p(C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (H * T), h = (row / T) % H, t = row % T;
      const float* qv = qp + row * D;
      const int64_t* cand = ip + (b * T + t) * C;
      const int8_t* kd = tp + row * C;
      float* s = sp + row * C;
      float* w = wp + row * C;
      const float* kbase = kp + (b * H + h) * S * D;
      const float* vbase = vp + (b * H + h) * S * D;
      for (int64_t c = 0; c < C; ++c) s[c] = kd[c] != NOT_ALLOWED ? dot(qv, kbase + cand[c] * D, D) * fscale : 0.f;
      row_weights(s, kd, C, feps, p.data(), w);
      float* o = op + row * D;
      for (int64_t c = 0; c < C; ++c)
        if (w[c] != 0.f) axpy(w[c], vbase + cand[c] * D, o, D);
    }
  });
  return {out, weights, scores};
}

std::vector<torch::Tensor> backward(torch::Tensor grad_out, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor idx, torch::Tensor kind, torch::Tensor scores, double scale,
                                    double eps) {
  check_inputs(q, k, v, idx, kind);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && grad_out.dtype() == torch::kFloat32 &&
                  scores.sizes() == kind.sizes() && scores.dtype() == torch::kFloat32,
              "structmt kernel: grad_out must be shaped like q and scores like kind, both float32");
  grad_out = grad_out.contiguous(); idx = idx.contiguous(); kind = kind.contiguous(); scores = scores.contiguous();
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), S = k.size(2), C = idx.size(2);
  auto dq = torch::zeros_like(q), dk = torch::zeros_like(k), dv = torch::zeros_like(v);
  const float* qp = q.data_ptr<float>(); const float* kp = k.data_ptr<float>(); const float* vp = v.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>(); const int64_t* ip = idx.data_ptr<int64_t>();
  const int8_t* tp = kind.data_ptr<int8_t>(); const float* sp = scores.data_ptr<float>();
  float* dqp = dq.data_ptr<float>(); float* dkp = dk.data_ptr<float>(); float* dvp = dv.data_ptr<float>();
  const float fscale = static_cast<float>(scale), feps = static_cast<float>(eps);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(C), w(C), dw(C);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H;
      const float* kbase = kp + bh * S * D; const float* vbase = vp + bh * S * D;
      float* dkbase = dkp + bh * S * D; float* dvbase = dvp + bh * S * D;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = bh * T + t;
        const int64_t* cand = ip + (b * T + t) * C;
        const int8_t* kd = tp + row * C;
        const float* s = sp + row * C;
        const float* g = gp + row * D;
        const float* qv = qp + row * D;
        float* dqv = dqp + row * D;
        bool any_support = false;
        for (int64_t c = 0; c < C && !any_support; ++c) any_support = kd[c] == SUPPORT;
        if (!any_support) continue;  // an all-zero row has no gradient
        const float e_total = row_weights(s, kd, C, feps, p.data(), w.data());
        float pdw = 0.f;  // sum over the support of p_c * dw_c
        for (int64_t c = 0; c < C; ++c) {
          dw[c] = kd[c] != NOT_ALLOWED ? dot(g, vbase + cand[c] * D, D) : 0.f;
          if (w[c] != 0.f) axpy(w[c], g, dvbase + cand[c] * D, D);
          if (kd[c] == SUPPORT) pdw += p[c] * dw[c];
        }
        for (int64_t c = 0; c < C; ++c) {
          float ds = 0.f;
          if (kd[c] == SUPPORT) {
            ds = p[c] * (1.f - e_total) * (dw[c] - pdw);
          } else if (kd[c] == ERROR) {
            const float sg = sigmoid(s[c]);
            ds = (dw[c] - pdw) * feps * sg * (1.f - sg);
          }
          if (ds == 0.f) continue;
          axpy(ds * fscale, kbase + cand[c] * D, dqv, D);
          axpy(ds * fscale, qv, dkbase + cand[c] * D, D);
        }
      }
    }
  });
  return {dq, dk, dv};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "structured candidate attention forward (CPU)");
  m.def("backward", &backward, "structured candidate attention backward (CPU)");
}
