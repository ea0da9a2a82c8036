// Fused frequency-masked attention over each atom's slots (allscaip.slot_kernel), forward and
// backward, for the compiled CPU path. q, k, v: (rows, slots, heads, dim), the projections' own
// layout. Per row n (an atom's slots) and head h:
//   s[a,b] = scale * sum_l A[n,l,a,b] * (q_l[a] . k_l[b]) + bias[n,b],  p = softmax_b(s),
//   out[a] = sum_b p[a,b] v[b]
// where q_l, k_l are channel block l of q and k (blocks of equal size). Every row has the same
// shape, so LANES rows are processed together, one per vector lane: each group of rows is
// copied into a lane-innermost layout, and every inner loop runs over the lanes (a fixed count
// the compiler vectorises), whatever the slot and block sizes.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int64_t LANES = 8;

// LANES values of T, one per row, as one vector (GCC/Clang vector extension): arithmetic on it
// is element-wise SIMD with no aliasing checks.
template <typename T>
struct Lanes {
  typedef T type __attribute__((vector_size(LANES * sizeof(T))));
};

// exp of each lane: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor series (to well
// below the type's rounding), 2^n put into the exponent bits. Lanes below the smallest normal
// result (the -inf of empty slots included) give 0.
template <typename T>
struct ExpTraits;
template <>
struct ExpTraits<float> {
  typedef int32_t Int;
  static constexpr int terms = 8, mantissa = 23, bias = 127;
  static constexpr float lowest = -87.0f, shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
};
template <>
struct ExpTraits<double> {
  typedef int64_t Int;
  static constexpr int terms = 14, mantissa = 52, bias = 1023;
  static constexpr double lowest = -708.0, shifter = 6755399441055744.0;  // 1.5 * 2^52
};

template <typename T, typename V = typename Lanes<T>::type>
V lanes_exp(V x) {
  typedef ExpTraits<T> E;
  typedef typename E::Int Int;
  typedef Int IntV __attribute__((vector_size(sizeof(V))));
  const auto low = x < E::lowest;  // all-ones lanes where the result is 0
  x = low ? V{} + E::lowest : x;
  V n = x * static_cast<T>(1.4426950408889634) + E::shifter;  // round(x / ln2), kept in floating point
  n -= E::shifter;
  const V r = (x - n * static_cast<T>(0.693145751953125)) - n * static_cast<T>(1.4286068203094173e-06);
  V poly = V{} + static_cast<T>(1.0);  // Horner: 1 + r (1 + r/2 (1 + r/3 (...)))
  for (int term = E::terms; term >= 1; --term) poly = poly * (r * static_cast<T>(1.0 / term)) + static_cast<T>(1.0);
  const IntV scale = (__builtin_convertvector(n, IntV) + E::bias) << E::mantissa;
  V result = poly * reinterpret_cast<const V&>(scale);
  return low ? V{} : result;
}

struct Shape {
  int64_t rows, heads, slots, dim, blocks;
  int64_t block() const { return dim / blocks; }
  int64_t groups() const { return (rows + LANES - 1) / LANES; }
};

// src (rows, inner) -> dst (inner) vectors of the rows of group g (missing rows: zeros)
template <typename T, typename V = typename Lanes<T>::type>
void pack(const T* src, V* dst, int64_t g, int64_t rows, int64_t inner) {
  for (int64_t i = 0; i < inner; ++i) dst[i] = V{};
  for (int64_t j = 0; j < LANES && g * LANES + j < rows; ++j) {
    const T* row = src + (g * LANES + j) * inner;
    for (int64_t i = 0; i < inner; ++i) dst[i][j] = row[i];
  }
}

template <typename T, typename V = typename Lanes<T>::type>
void unpack(const V* src, T* dst, int64_t g, int64_t rows, int64_t inner) {
  for (int64_t j = 0; j < LANES && g * LANES + j < rows; ++j) {
    T* row = dst + (g * LANES + j) * inner;
    for (int64_t i = 0; i < inner; ++i) row[i] = src[i][j];
  }
}

template <typename T, typename V = typename Lanes<T>::type>
void forward_group(const Shape& s, const V* q, const V* k, const V* v, const V* A, const V* bias, V* out,
                   V* probs, T scale) {
  // q, k, v, out: (slots, heads, dim); A: (blocks, slots, slots); bias: (slots); probs: (heads, slots, slots)
  const int64_t P = s.slots, D = s.dim, B = s.block(), HD = s.heads * s.dim;
  std::vector<V> score(P);
  for (int64_t h = 0; h < s.heads; ++h) {
    const V* qh = q + h * D;
    const V* kh = k + h * D;
    const V* vh = v + h * D;
    V* oh = out + h * D;
    V* ph = probs + h * P * P;
    for (int64_t a = 0; a < P; ++a) {
      const V* qa = qh + a * HD;
      V top = V{} - std::numeric_limits<T>::infinity();
      for (int64_t b = 0; b < P; ++b) {
        const V* kb = kh + b * HD;
        V sum = V{};
        for (int64_t l = 0; l < s.blocks; ++l) {
          V t = V{};
          for (int64_t c = l * B; c < (l + 1) * B; ++c) t += qa[c] * kb[c];
          sum += t * A[(l * P + a) * P + b];
        }
        sum = sum * scale + bias[b];
        score[b] = sum;
        top = sum > top ? sum : top;
      }
      V total = V{};
      for (int64_t b = 0; b < P; ++b) {
        const V e = lanes_exp<T, V>(score[b] - top);
        score[b] = e;
        total += e;
      }
      V* oa = oh + a * HD;
      for (int64_t c = 0; c < D; ++c) oa[c] = V{};
      for (int64_t b = 0; b < P; ++b) {
        const V pab = score[b] / total;
        ph[a * P + b] = pab;
        const V* vb = vh + b * HD;
        for (int64_t c = 0; c < D; ++c) oa[c] += pab * vb[c];
      }
    }
  }
}

template <typename T, typename V = typename Lanes<T>::type>
void backward_group(const Shape& s, const V* q, const V* k, const V* v, const V* A, const V* probs, const V* go,
                    V* gq, V* gk, V* gv, V* gA, V* gbias, T scale) {
  // layouts as in forward_group; gradients accumulate into zeroed buffers of the same layouts
  const int64_t P = s.slots, D = s.dim, B = s.block(), HD = s.heads * s.dim;
  std::vector<V> g(P);
  for (int64_t h = 0; h < s.heads; ++h) {
    const int64_t offset = h * D;
    const V* qh = q + offset;
    const V* kh = k + offset;
    const V* vh = v + offset;
    const V* goh = go + offset;
    V* gqh = gq + offset;
    V* gkh = gk + offset;
    V* gvh = gv + offset;
    const V* ph = probs + h * P * P;
    for (int64_t a = 0; a < P; ++a) {
      const V* qa = qh + a * HD;
      const V* goa = goh + a * HD;
      V* gqa = gqh + a * HD;
      // the weights' gradient g[b] = grad_out[a] . v[b]; v's: p[a,b] grad_out[a]
      V dot = V{};
      for (int64_t b = 0; b < P; ++b) {
        const V pab = ph[a * P + b];
        const V* vb = vh + b * HD;
        V* gvb = gvh + b * HD;
        V gb = V{};
        for (int64_t c = 0; c < D; ++c) {
          gb += goa[c] * vb[c];
          gvb[c] += pab * goa[c];
        }
        g[b] = gb;
        dot += pab * gb;
      }
      // through the softmax (the bias takes this gradient as it is), then the scale
      for (int64_t b = 0; b < P; ++b) {
        const V gb = ph[a * P + b] * (g[b] - dot);
        gbias[b] += gb;
        g[b] = gb * scale;
      }
      // through s = sum_l A_l (q_l . k_l): the angles take g (q_l . k_l), q_l and k_l take g A_l
      for (int64_t b = 0; b < P; ++b) {
        const V gb = g[b];
        const V* kb = kh + b * HD;
        V* gkb = gkh + b * HD;
        for (int64_t l = 0; l < s.blocks; ++l) {
          const int64_t at = (l * P + a) * P + b;
          V t = V{};
          for (int64_t c = l * B; c < (l + 1) * B; ++c) t += qa[c] * kb[c];
          gA[at] += gb * t;
          const V w = gb * A[at];
          for (int64_t c = l * B; c < (l + 1) * B; ++c) {
            gqa[c] += w * kb[c];
            gkb[c] += w * qa[c];
          }
        }
      }
    }
  }
}

Shape shape_of(const at::Tensor& q, const at::Tensor& angles) {  // q: (rows, slots, heads, dim)
  return Shape{q.size(0), q.size(2), q.size(1), q.size(3), angles.size(1)};
}

void check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& angles,
           const at::Tensor& bias) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "slot_attention: q, k, v must be (rows, slots, heads, dim) of one shape");
  TORCH_CHECK(angles.dim() == 4 && angles.size(0) == q.size(0) && angles.size(2) == q.size(1) &&
                  angles.size(3) == q.size(1) && q.size(3) % angles.size(1) == 0,
              "slot_attention: angles must be (rows, blocks, slots, slots), blocks dividing dim");
  TORCH_CHECK(bias.dim() == 2 && bias.size(0) == q.size(0) && bias.size(1) == q.size(1),
              "slot_attention: bias must be (rows, slots)");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
                  angles.scalar_type() == q.scalar_type() && bias.scalar_type() == q.scalar_type(),
              "slot_attention: all inputs must have one dtype");
}

std::tuple<at::Tensor, at::Tensor> slot_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& angles, const at::Tensor& bias, double scale) {
  check(q, k, v, angles, bias);
  auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), ac = angles.contiguous(),
       bc = bias.contiguous();
  const Shape s = shape_of(q, angles);
  auto out = at::empty_like(qc);
  // the softmax weights stay in the lane layout (groups, heads, slots, slots, LANES): only the
  // backward pass reads them
  auto probs = at::empty({s.groups(), s.heads, s.slots, s.slots, LANES}, qc.options());
  const int64_t per_head = s.heads * s.slots * s.dim, pairs = s.slots * s.slots;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slot_attention", [&] {
    using V = typename Lanes<scalar_t>::type;
    at::parallel_for(0, s.groups(), 1, [&](int64_t begin, int64_t end) {
      std::vector<V> qp(per_head), kp(per_head), vp(per_head), op(per_head), ap(s.blocks * pairs), bp(s.slots);
      for (int64_t g = begin; g < end; ++g) {
        pack(qc.data_ptr<scalar_t>(), qp.data(), g, s.rows, per_head);
        pack(kc.data_ptr<scalar_t>(), kp.data(), g, s.rows, per_head);
        pack(vc.data_ptr<scalar_t>(), vp.data(), g, s.rows, per_head);
        pack(ac.data_ptr<scalar_t>(), ap.data(), g, s.rows, s.blocks * pairs);
        pack(bc.data_ptr<scalar_t>(), bp.data(), g, s.rows, s.slots);
        V* pp = reinterpret_cast<V*>(probs.data_ptr<scalar_t>()) + g * s.heads * pairs;
        forward_group<scalar_t, V>(s, qp.data(), kp.data(), vp.data(), ap.data(), bp.data(), op.data(), pp,
                                static_cast<scalar_t>(scale));
        unpack(op.data(), out.data_ptr<scalar_t>(), g, s.rows, per_head);
      }
    });
  });
  return {out, probs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> slot_attention_backward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& angles,
    const at::Tensor& probs, const at::Tensor& grad_out, double scale) {
  auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), ac = angles.contiguous(),
       pc = probs.contiguous(), gc = grad_out.contiguous();
  const Shape s = shape_of(q, angles);
  auto gq = at::empty_like(qc), gk = at::empty_like(qc), gv = at::empty_like(qc), ga = at::empty_like(ac);
  auto gb = at::empty({s.rows, s.slots}, qc.options());
  const int64_t per_head = s.heads * s.slots * s.dim, pairs = s.slots * s.slots;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slot_attention_backward", [&] {
    using V = typename Lanes<scalar_t>::type;
    at::parallel_for(0, s.groups(), 1, [&](int64_t begin, int64_t end) {
      std::vector<V> qp(per_head), kp(per_head), vp(per_head), gop(per_head), ap(s.blocks * pairs),
          gqp(per_head), gkp(per_head), gvp(per_head), gap(s.blocks * pairs), gbp(s.slots);
      for (int64_t g = begin; g < end; ++g) {
        pack(qc.data_ptr<scalar_t>(), qp.data(), g, s.rows, per_head);
        pack(kc.data_ptr<scalar_t>(), kp.data(), g, s.rows, per_head);
        pack(vc.data_ptr<scalar_t>(), vp.data(), g, s.rows, per_head);
        pack(gc.data_ptr<scalar_t>(), gop.data(), g, s.rows, per_head);
        pack(ac.data_ptr<scalar_t>(), ap.data(), g, s.rows, s.blocks * pairs);
        const V* pp = reinterpret_cast<const V*>(pc.data_ptr<scalar_t>()) + g * s.heads * pairs;
        for (auto* buffer : {&gqp, &gkp, &gvp, &gap, &gbp}) std::fill(buffer->begin(), buffer->end(), V{});
        backward_group<scalar_t, V>(s, qp.data(), kp.data(), vp.data(), ap.data(), pp, gop.data(), gqp.data(),
                                 gkp.data(), gvp.data(), gap.data(), gbp.data(), static_cast<scalar_t>(scale));
        unpack(gqp.data(), gq.data_ptr<scalar_t>(), g, s.rows, per_head);
        unpack(gkp.data(), gk.data_ptr<scalar_t>(), g, s.rows, per_head);
        unpack(gvp.data(), gv.data_ptr<scalar_t>(), g, s.rows, per_head);
        unpack(gap.data(), ga.data_ptr<scalar_t>(), g, s.rows, s.blocks * pairs);
        unpack(gbp.data(), gb.data_ptr<scalar_t>(), g, s.rows, s.slots);
      }
    });
  });
  return {gq, gk, gv, ga, gb};
}

}  // namespace

TORCH_LIBRARY(allscaip_kernels, m) {
  m.def("slot_attention(Tensor q, Tensor k, Tensor v, Tensor angles, Tensor bias, float scale) -> (Tensor, Tensor)");
  m.def("slot_attention_backward(Tensor q, Tensor k, Tensor v, Tensor angles, Tensor probs, Tensor grad_out, "
        "float scale) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(allscaip_kernels, CPU, m) {
  m.impl("slot_attention", &slot_attention);
  m.impl("slot_attention_backward", &slot_attention_backward);
}

