// Fused frequency-masked attention over each atom's slots (allscaip.slot_kernel), forward and
// backward, for the compiled CPU path. q, k, v: (rows, slots, heads, dim), the projections' own
// layout; u: (rows, slots, 3) the slots' edge directions. Per row n (an atom's slots) and head h:
//   s[a,b] = scale * sum_l A[n,l,a,b] * (q_l[a] . k_l[b]) + bias[n,b],  p = softmax_b(s),
//   out[a] = sum_b p[a,b] v[b]
// where q_l, k_l are channel block l of q and k (blocks of equal size) and A[n,l,a,b] the Legendre
// weight P_l of the angle between u[n,a] and u[n,b], computed here by the recurrence of
// allscaip.attention.legendre_weights (homogeneous in each vector: zero directions weigh l = 0
// by 1, l > 0 by 0), so that the (rows, blocks, slots, slots) table is never stored. Every row has the same
// shape, so LANES rows are processed together, one per vector lane: each group of rows is
// copied into a lane-innermost layout, and every inner loop runs over the lanes (a fixed count
// the compiler vectorises), whatever the slot and block sizes.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
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

template <typename V>
inline V dot3(const V* x, const V* y) {
  return x[0] * y[0] + x[1] * y[1] + x[2] * y[2];
}

// f(a, b, u[a], u[b], |u[a]|^2, |u[b]|^2, u[a] . u[b]) for every two slots of a group
template <typename V, typename F>
void each_pair(int64_t P, const V* u, F&& f) {
  for (int64_t a = 0; a < P; ++a) {
    const V* ua = u + 3 * a;
    const V squared_a = dot3(ua, ua);
    for (int64_t b = 0; b < P; ++b) {
      const V* ub = u + 3 * b;
      f(a, b, ua, ub, squared_a, dot3(ub, ub), dot3(ua, ub));
    }
  }
}

// A (slots, slots, blocks) of one group from its directions u (slots, 3): the blocks of a slot
// pair side by side, as the products read them
template <typename T, typename V = typename Lanes<T>::type>
void legendre_table(const Shape& s, const V* u, V* A) {
  const int64_t P = s.slots;
  each_pair(P, u, [&](int64_t a, int64_t b, const V*, const V*, V squared_a, V squared_b, V dot) {
    const V norm = squared_a * squared_b;
    V* w = A + (a * P + b) * s.blocks;  // w[l]: P_l
    w[0] = V{} + static_cast<T>(1.0);
    if (s.blocks > 1) w[1] = dot;
    for (int64_t l = 1; l + 1 < s.blocks; ++l)
      w[l + 1] = (static_cast<T>(2 * l + 1) * dot * w[l] - static_cast<T>(l) * norm * w[l - 1]) *
                 (static_cast<T>(1) / static_cast<T>(l + 1));
  });
}

// the gradient of the directions (slots, 3), accumulated, from the table's gA (consumed)
template <typename T, typename V = typename Lanes<T>::type>
void legendre_backward(const Shape& s, const V* u, const V* A, V* gA, V* gu) {
  const int64_t P = s.slots;
  each_pair(P, u, [&](int64_t a, int64_t b, const V* ua, const V* ub, V squared_a, V squared_b, V dot) {
    const V norm = squared_a * squared_b;
    const V* w = A + (a * P + b) * s.blocks;
    V* gw = gA + (a * P + b) * s.blocks;
    V g_dot = V{}, g_norm = V{};
    for (int64_t l = s.blocks - 2; l >= 1; --l) {  // back through w[l + 1] = (c1 dot w[l] - c2 norm w[l - 1]) / (l + 1)
      const V g = gw[l + 1] * (static_cast<T>(1) / static_cast<T>(l + 1));
      const V c1 = g * static_cast<T>(2 * l + 1), c2 = g * static_cast<T>(l);
      g_dot += c1 * w[l];
      g_norm -= c2 * w[l - 1];
      gw[l] += c1 * dot;
      gw[l - 1] -= c2 * norm;
    }
    if (s.blocks > 1) g_dot += gw[1];
    V* gua = gu + 3 * a;
    V* gub = gu + 3 * b;
    for (int x = 0; x < 3; ++x) {
      gua[x] += g_dot * ub[x] + static_cast<T>(2.0) * g_norm * squared_b * ua[x];
      gub[x] += g_dot * ua[x] + static_cast<T>(2.0) * g_norm * squared_a * ub[x];
    }
  });
}

// DIM, BLOCK: the head's channels and the channels per block when known at compile time
// (dispatch_shape), else 0. The loops run over chunks of whole blocks (CHUNK channels, or the
// block or the head if either is wider; the whole head for run-time sizes) and keep the chunk
// they accumulate (of an output row, a gradient row) in a local array, which compile-time sizes
// let the compiler hold in registers.
constexpr int64_t MAX_DIM = 256;  // channels per head of the generic (DIM 0) instantiation
constexpr int64_t CHUNK = 16;

template <int DIM, int BLOCK>
struct Chunks {
  static constexpr int64_t capacity = DIM > 0 ? (BLOCK > CHUNK ? BLOCK : (DIM < CHUNK ? DIM : CHUNK)) : MAX_DIM;
  int64_t dim, block, size;  // size: channels per chunk, a multiple of the block dividing dim
  Chunks(const Shape& s)
      : dim(DIM > 0 ? DIM : s.dim), block(BLOCK > 0 ? BLOCK : s.block()), size(DIM > 0 ? capacity : dim) {}
};

// dst[c] = sum_i weights[i * stride] rows[i * row_stride + c] for c < C, accumulated in acc
template <typename V>
inline void weighted_rows(const V* weights, int64_t stride, const V* rows, int64_t row_stride, int64_t n, int64_t C,
                          V* acc, V* dst) {
  for (int64_t c = 0; c < C; ++c) acc[c] = V{};
  for (int64_t i = 0; i < n; ++i) {
    const V w = weights[i * stride];
    const V* row = rows + i * row_stride;
    for (int64_t c = 0; c < C; ++c) acc[c] += w * row[c];
  }
  for (int64_t c = 0; c < C; ++c) dst[c] = acc[c];
}

template <typename T, int DIM, int BLOCK, typename V = typename Lanes<T>::type>
void forward_group(const Shape& s, const V* q, const V* k, const V* v, const V* A, const V* bias, V* out,
                   V* probs, T scale) {
  // q, k, v, out: (slots, heads, dim); A: (slots, slots, blocks); bias: (slots); probs: (heads, slots, slots)
  const Chunks<DIM, BLOCK> ch(s);
  const int64_t P = s.slots, D = ch.dim, B = ch.block, C = ch.size, L = D / B, HD = s.heads * s.dim;
  V qa[Chunks<DIM, BLOCK>::capacity], acc[Chunks<DIM, BLOCK>::capacity];
  std::vector<V> score(P);
  for (int64_t h = 0; h < s.heads; ++h) {
    V* ph = probs + h * P * P;
    for (int64_t a = 0; a < P; ++a) {
      std::fill(score.begin(), score.end(), V{});
      for (int64_t c0 = 0; c0 < D; c0 += C) {
        for (int64_t c = 0; c < C; ++c) qa[c] = q[a * HD + h * D + c0 + c];
        for (int64_t b = 0; b < P; ++b) {
          const V* kb = k + b * HD + h * D + c0;
          const V* Aab = A + (a * P + b) * L + c0 / B;
          V sum = V{};
          for (int64_t l = 0; l < C / B; ++l) {
            V t = V{};
            for (int64_t c = l * B; c < (l + 1) * B; ++c) t += qa[c] * kb[c];
            sum += t * Aab[l];
          }
          score[b] += sum;
        }
      }
      V top = V{} - std::numeric_limits<T>::infinity();
      for (int64_t b = 0; b < P; ++b) {
        score[b] = score[b] * scale + bias[b];
        top = score[b] > top ? score[b] : top;
      }
      V total = V{};
      for (int64_t b = 0; b < P; ++b) {
        const V e = lanes_exp<T, V>(score[b] - top);
        score[b] = e;
        total += e;
      }
      const V inverse = static_cast<T>(1) / total;
      for (int64_t b = 0; b < P; ++b) ph[a * P + b] = score[b] * inverse;
      for (int64_t c0 = 0; c0 < D; c0 += C)
        weighted_rows(ph + a * P, 1, v + h * D + c0, HD, P, C, acc, out + a * HD + h * D + c0);
    }
  }
}

template <typename T, int DIM, int BLOCK, typename V = typename Lanes<T>::type>
void backward_group(const Shape& s, const V* q, const V* k, const V* v, const V* A, const V* probs, const V* go,
                    V* gq, V* gk, V* gv, V* gA, V* gbias, V* G, T scale) {
  // layouts as in forward_group; gq, gk, gv are written, gA and gbias accumulate into zeroed
  // buffers; G (slots, slots) is workspace: the scores' gradient of one head
  const Chunks<DIM, BLOCK> ch(s);
  const int64_t P = s.slots, D = ch.dim, B = ch.block, C = ch.size, L = D / B, HD = s.heads * s.dim;
  V row[Chunks<DIM, BLOCK>::capacity], acc[Chunks<DIM, BLOCK>::capacity];
  for (int64_t h = 0; h < s.heads; ++h) {
    const V* ph = probs + h * P * P;
    // the weights' gradient go[a] . v[b], chunk by chunk
    std::fill(G, G + P * P, V{});
    for (int64_t c0 = 0; c0 < D; c0 += C)
      for (int64_t a = 0; a < P; ++a) {
        for (int64_t c = 0; c < C; ++c) row[c] = go[a * HD + h * D + c0 + c];
        for (int64_t b = 0; b < P; ++b) {
          const V* vb = v + b * HD + h * D + c0;
          V g = V{};
          for (int64_t c = 0; c < C; ++c) g += row[c] * vb[c];
          G[a * P + b] += g;
        }
      }
    // the scores' gradient through p = softmax(s) (the bias takes it as it is), then the scale
    for (int64_t a = 0; a < P; ++a) {
      V dot = V{};
      for (int64_t b = 0; b < P; ++b) dot += ph[a * P + b] * G[a * P + b];
      for (int64_t b = 0; b < P; ++b) {
        const V g = ph[a * P + b] * (G[a * P + b] - dot);
        gbias[b] += g;
        G[a * P + b] = g * scale;
      }
    }
    for (int64_t c0 = 0; c0 < D; c0 += C) {
      // v[b] takes sum_a p[a,b] go[a]
      for (int64_t b = 0; b < P; ++b)
        weighted_rows(ph + b, P, go + h * D + c0, HD, P, C, acc, gv + b * HD + h * D + c0);
      // through s = sum_l A_l (q_l . k_l): A_l takes G (q_l . k_l), q_l[a] sum_b G A_l k_l[b]
      for (int64_t a = 0; a < P; ++a) {
        for (int64_t c = 0; c < C; ++c) row[c] = q[a * HD + h * D + c0 + c], acc[c] = V{};
        for (int64_t b = 0; b < P; ++b) {
          const V g = G[a * P + b];
          const V* kb = k + b * HD + h * D + c0;
          const int64_t at = (a * P + b) * L + c0 / B;
          for (int64_t l = 0; l < C / B; ++l) {
            V t = V{};
            for (int64_t c = l * B; c < (l + 1) * B; ++c) t += row[c] * kb[c];
            gA[at + l] += g * t;
            const V w = g * A[at + l];
            for (int64_t c = l * B; c < (l + 1) * B; ++c) acc[c] += w * kb[c];
          }
        }
        for (int64_t c = 0; c < C; ++c) gq[a * HD + h * D + c0 + c] = acc[c];
      }
      // k_l[b] takes sum_a G A_l q_l[a]
      for (int64_t b = 0; b < P; ++b) {
        for (int64_t c = 0; c < C; ++c) acc[c] = V{};
        for (int64_t a = 0; a < P; ++a) {
          const V g = G[a * P + b];
          const V* qa = q + a * HD + h * D + c0;
          const V* Aab = A + (a * P + b) * L + c0 / B;
          for (int64_t l = 0; l < C / B; ++l) {
            const V w = g * Aab[l];
            for (int64_t c = l * B; c < (l + 1) * B; ++c) acc[c] += w * qa[c];
          }
        }
        for (int64_t c = 0; c < C; ++c) gk[b * HD + h * D + c0 + c] = acc[c];
      }
    }
  }
}

// f(DIM, BLOCK) as std::integral_constant values: compile-time sizes for the common shapes (16
// or 32 channels per head, blocks of 1-16), else 0 and 0 (sizes read at run time)
template <int DIM, typename F>
void dispatch_block(int64_t block, F&& f) {
  using std::integral_constant;
  switch (block) {
    case 1: return f(integral_constant<int, DIM>{}, integral_constant<int, 1>{});
    case 2: return f(integral_constant<int, DIM>{}, integral_constant<int, 2>{});
    case 4: return f(integral_constant<int, DIM>{}, integral_constant<int, 4>{});
    case 8: return f(integral_constant<int, DIM>{}, integral_constant<int, 8>{});
    case 16: return f(integral_constant<int, DIM>{}, integral_constant<int, 16>{});
    default: return f(integral_constant<int, 0>{}, integral_constant<int, 0>{});
  }
}

template <typename F>
void dispatch_shape(int64_t dim, int64_t block, F&& f) {
  if (dim == 16) return dispatch_block<16>(block, f);
  if (dim == 32) return dispatch_block<32>(block, f);
  return f(std::integral_constant<int, 0>{}, std::integral_constant<int, 0>{});
}

Shape shape_of(const at::Tensor& q, int64_t blocks) {  // q: (rows, slots, heads, dim)
  return Shape{q.size(0), q.size(2), q.size(1), q.size(3), blocks};
}

void check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& directions,
           const at::Tensor& bias, int64_t blocks) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "slot_attention: q, k, v must be (rows, slots, heads, dim) of one shape");
  TORCH_CHECK(directions.dim() == 3 && directions.size(0) == q.size(0) && directions.size(1) == q.size(1) &&
                  directions.size(2) == 3,
              "slot_attention: directions must be (rows, slots, 3)");
  TORCH_CHECK(blocks >= 1 && q.size(3) % blocks == 0, "slot_attention: blocks must be at least 1, dividing dim");
  TORCH_CHECK(q.size(3) <= MAX_DIM, "slot_attention: at most ", MAX_DIM, " channels per head");
  TORCH_CHECK(bias.dim() == 2 && bias.size(0) == q.size(0) && bias.size(1) == q.size(1),
              "slot_attention: bias must be (rows, slots)");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
                  directions.scalar_type() == q.scalar_type() && bias.scalar_type() == q.scalar_type(),
              "slot_attention: all inputs must have one dtype");
}

std::tuple<at::Tensor, at::Tensor> slot_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& directions, const at::Tensor& bias, int64_t blocks,
                                                  double scale) {
  check(q, k, v, directions, bias, blocks);
  auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), uc = directions.contiguous(),
       bc = bias.contiguous();
  const Shape s = shape_of(q, blocks);
  auto out = at::empty_like(qc);
  // the softmax weights stay in the lane layout (groups, heads, slots, slots, LANES): only the
  // backward pass reads them
  auto probs = at::empty({s.groups(), s.heads, s.slots, s.slots, LANES}, qc.options());
  const int64_t per_head = s.heads * s.slots * s.dim, pairs = s.slots * s.slots;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slot_attention", [&] {
    using V = typename Lanes<scalar_t>::type;
    at::parallel_for(0, s.groups(), 1, [&](int64_t begin, int64_t end) {
      std::vector<V> qp(per_head), kp(per_head), vp(per_head), op(per_head), up(3 * s.slots), ap(s.blocks * pairs),
          bp(s.slots);
      for (int64_t g = begin; g < end; ++g) {
        pack(qc.data_ptr<scalar_t>(), qp.data(), g, s.rows, per_head);
        pack(kc.data_ptr<scalar_t>(), kp.data(), g, s.rows, per_head);
        pack(vc.data_ptr<scalar_t>(), vp.data(), g, s.rows, per_head);
        pack(uc.data_ptr<scalar_t>(), up.data(), g, s.rows, 3 * s.slots);
        pack(bc.data_ptr<scalar_t>(), bp.data(), g, s.rows, s.slots);
        legendre_table<scalar_t, V>(s, up.data(), ap.data());
        V* pp = reinterpret_cast<V*>(probs.data_ptr<scalar_t>()) + g * s.heads * pairs;
        dispatch_shape(s.dim, s.block(), [&](auto dim, auto block) {
          forward_group<scalar_t, decltype(dim)::value, decltype(block)::value, V>(
              s, qp.data(), kp.data(), vp.data(), ap.data(), bp.data(), op.data(), pp, static_cast<scalar_t>(scale));
        });
        unpack(op.data(), out.data_ptr<scalar_t>(), g, s.rows, per_head);
      }
    });
  });
  return {out, probs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> slot_attention_backward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& directions,
    const at::Tensor& probs, const at::Tensor& grad_out, int64_t blocks, double scale) {
  auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), uc = directions.contiguous(),
       pc = probs.contiguous(), gc = grad_out.contiguous();
  const Shape s = shape_of(q, blocks);
  auto gq = at::empty_like(qc), gk = at::empty_like(qc), gv = at::empty_like(qc), gu = at::empty_like(uc);
  auto gb = at::empty({s.rows, s.slots}, qc.options());
  const int64_t per_head = s.heads * s.slots * s.dim, pairs = s.slots * s.slots;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slot_attention_backward", [&] {
    using V = typename Lanes<scalar_t>::type;
    at::parallel_for(0, s.groups(), 1, [&](int64_t begin, int64_t end) {
      std::vector<V> qp(per_head), kp(per_head), vp(per_head), gop(per_head), up(3 * s.slots), ap(s.blocks * pairs),
          gqp(per_head), gkp(per_head), gvp(per_head), gap(s.blocks * pairs), gup(3 * s.slots), gbp(s.slots),
          work(pairs);
      for (int64_t g = begin; g < end; ++g) {
        pack(qc.data_ptr<scalar_t>(), qp.data(), g, s.rows, per_head);
        pack(kc.data_ptr<scalar_t>(), kp.data(), g, s.rows, per_head);
        pack(vc.data_ptr<scalar_t>(), vp.data(), g, s.rows, per_head);
        pack(gc.data_ptr<scalar_t>(), gop.data(), g, s.rows, per_head);
        pack(uc.data_ptr<scalar_t>(), up.data(), g, s.rows, 3 * s.slots);
        legendre_table<scalar_t, V>(s, up.data(), ap.data());
        const V* pp = reinterpret_cast<const V*>(pc.data_ptr<scalar_t>()) + g * s.heads * pairs;
        for (auto* buffer : {&gap, &gup, &gbp}) std::fill(buffer->begin(), buffer->end(), V{});
        dispatch_shape(s.dim, s.block(), [&](auto dim, auto block) {
          backward_group<scalar_t, decltype(dim)::value, decltype(block)::value, V>(
              s, qp.data(), kp.data(), vp.data(), ap.data(), pp, gop.data(), gqp.data(), gkp.data(), gvp.data(),
              gap.data(), gbp.data(), work.data(), static_cast<scalar_t>(scale));
        });
        legendre_backward<scalar_t, V>(s, up.data(), ap.data(), gap.data(), gup.data());
        unpack(gqp.data(), gq.data_ptr<scalar_t>(), g, s.rows, per_head);
        unpack(gkp.data(), gk.data_ptr<scalar_t>(), g, s.rows, per_head);
        unpack(gvp.data(), gv.data_ptr<scalar_t>(), g, s.rows, per_head);
        unpack(gup.data(), gu.data_ptr<scalar_t>(), g, s.rows, 3 * s.slots);
        unpack(gbp.data(), gb.data_ptr<scalar_t>(), g, s.rows, s.slots);
      }
    });
  });
  return {gq, gk, gv, gu, gb};
}

}  // namespace

TORCH_LIBRARY(allscaip_kernels, m) {
  m.def("slot_attention(Tensor q, Tensor k, Tensor v, Tensor directions, Tensor bias, int blocks, float scale) -> "
        "(Tensor, Tensor)");
  m.def("slot_attention_backward(Tensor q, Tensor k, Tensor v, Tensor directions, Tensor probs, Tensor grad_out, "
        "int blocks, float scale) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(allscaip_kernels, CPU, m) {
  m.impl("slot_attention", &slot_attention);
  m.impl("slot_attention_backward", &slot_attention_backward);
}

