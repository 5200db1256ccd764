// The closed-form split (jaxsplit.solvers.closed_form_split) as a CPU kernel for XLA's FFI.
//
// The same float operations in the same order as the JAX version (compiled with -ffp-contract=off: no
// fused multiply-add), so that the rows are the JAX closed form's. Two handlers:
//
//   jaxsplit_closed_form_rows_{f32,f64}:
//       layers (B, 8) [the fields of LayerArrays, in its order: the first 8 of kTableFields], flops,
//       bandwidth, latency, share (B, N) -> rows (B, N) int32.
//   jaxsplit_exec_times_{f32,f64}:
//       table (G, T, 9) [kTableFields: 8 layer fields and the multiplicity], size (G, K) int32, flops,
//       bandwidth, latency, share (G, R, N), model (G, R) int32 -> E (G, R): for each request the
//       sum over its model's unique layers (the first size[model] of the model's T / K table rows)
//       of multiplicity x the latency of the layer under the closed-form split.
//
// The columns are read by position; jaxsplit_table_fields() names them so that jaxsplit.kernels can
// refuse a library whose order is not jaxsplit.latency.TABLE_FIELDS.
//
// Leading axes (G) come from vmap(..., vmap_method="broadcast_all") over the FFI call; G = 1 without.
// Work is shared out over XLA's intra-op thread pool in blocks; the calling thread takes blocks too,
// so the call finishes even if no pool thread ever runs.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kMaxDevices = 64;
constexpr int kFields = 8;
// The columns of a table row, in the order set_layer and exec_impl read them (kFields layer fields,
// then the multiplicity).
constexpr const char kTableFields[] =
    "in_height,out_height,stride,pad_top,kernel_extent,in_row_bytes,out_row_bytes,row_work,count";
constexpr int kCorrectionRounds = 3;  // jaxsplit.solvers.CLOSED_FORM_CORRECTION_ROUNDS

// The rule runs on blocks of W instances at once ("lanes", one 256-bit SIMD register of them:
// GCC/Clang vector extensions), device-major: x[i] is the vector of device i over the lanes.
// The loops whose length depends on the data (draining the water fill, giving out the rounding
// remainder, the correction) stop when every lane of the block is done; a lane that is done is left
// unchanged by the further passes, as in the JAX version. Row counts are integer-valued floats (exact
// below 2^24 rows in float32).
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t M __attribute__((vector_size(32)));
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef int64_t M __attribute__((vector_size(32)));
};

template <typename T>
constexpr int kLanes = 32 / sizeof(T);

template <typename T>
using Vec = typename Simd<T>::V;
template <typename T>
using Mask = typename Simd<T>::M;  // lanes all ones (true) or zero (false)

template <typename T>
inline Vec<T> splat(T x) {
  return Vec<T>{} + x;
}
template <typename T>
inline Vec<T> sel(Mask<T> m, Vec<T> a, Vec<T> b) {
  return m ? a : b;
}
// std::max / std::min semantics per lane: max(a, b) = a < b ? b : a.
template <typename T>
inline Vec<T> vmax(Vec<T> a, Vec<T> b) {
  return a < b ? b : a;
}
template <typename T>
inline Vec<T> vmin(Vec<T> a, Vec<T> b) {
  return b < a ? b : a;
}
template <typename T>
inline bool any(Mask<T> m) {
  for (int l = 0; l < kLanes<T>; ++l)
    if (m[l]) return true;
  return false;
}
template <typename T>
inline Vec<T> vfloor(Vec<T> x) {
  for (int l = 0; l < kLanes<T>; ++l) x[l] = std::floor(x[l]);
  return x;
}

template <typename T>
struct Block {
  int num;  // devices
  // layer fields (LayerArrays)
  Vec<T> in_height, out_height, stride, pad_top, kernel_extent, in_row_bytes, out_row_bytes, row_work;
  // rates (jaxsplit.latency.allocation_rates)
  Mask<T> active[kMaxDevices];
  Vec<T> sec_per_flop[kMaxDevices], sec_per_byte[kMaxDevices], message[kMaxDevices];

  void set_layer(int l, const T* f) {
    in_height[l] = f[0]; out_height[l] = f[1]; stride[l] = f[2]; pad_top[l] = f[3];
    kernel_extent[l] = f[4]; in_row_bytes[l] = f[5]; out_row_bytes[l] = f[6]; row_work[l] = f[7];
  }
  void copy_layer(int l, int k) {
    in_height[l] = in_height[k]; out_height[l] = out_height[k]; stride[l] = stride[k]; pad_top[l] = pad_top[k];
    kernel_extent[l] = kernel_extent[k]; in_row_bytes[l] = in_row_bytes[k]; out_row_bytes[l] = out_row_bytes[k];
    row_work[l] = row_work[k];
  }
  // Rates of one instance from its cluster and shares (N,) into lane l.
  void set_rates(int l, const T* flops, const T* bandwidth, const T* latency, const T* share) {
    for (int i = 0; i < num; ++i) {
      bool a = share[i] > T(0);
      T safe = a ? share[i] : T(1);
      active[i][l] = a ? -1 : 0;
      sec_per_flop[i][l] = a ? T(1) / (safe * flops[i]) : T(0);
      sec_per_byte[i][l] = a ? T(1) / (safe * bandwidth[i]) : T(0);
      message[i][l] = T(2) * latency[i];
    }
  }
  void copy_rates(int l, const Block& from, int k) {
    for (int i = 0; i < num; ++i) {
      active[i][l] = from.active[i][k];
      sec_per_flop[i][l] = from.sec_per_flop[i][k];
      sec_per_byte[i][l] = from.sec_per_byte[i][k];
      message[i][l] = from.message[i][k];
    }
  }
};

template <typename T>
struct Lanes {
  Vec<T> x[kMaxDevices];
  Vec<T>& operator[](int i) { return x[i]; }
  const Vec<T>& operator[](int i) const { return x[i]; }
};

// Device times (jaxsplit.latency.segment_time, devices in order) of ``rows`` and their maximum per
// lane (NaN-propagating like jnp.max).
template <typename T>
Vec<T> device_times(const Block<T>& b, const Lanes<T>& rows, Lanes<T>& times) {
  const Vec<T> zero = splat(T(0)), one = splat(T(1));
  Vec<T> start = zero, best = splat(-std::numeric_limits<T>::infinity());
  Mask<T> nan = Mask<T>{};
  for (int i = 0; i < b.num; ++i) {
    Vec<T> n = rows[i];
    Vec<T> lo = vmax<T>(zero, start * b.stride - b.pad_top);
    Vec<T> hi = vmin<T>(b.in_height, (start + n - one) * b.stride - b.pad_top + b.kernel_extent);
    Vec<T> read = vmax<T>(hi - lo, zero);
    Vec<T> t = b.message[i] + (read * b.in_row_bytes + n * b.out_row_bytes) * b.sec_per_byte[i] +
               n * b.row_work * b.sec_per_flop[i];
    t = sel<T>(n > zero, t, zero);
    times[i] = t;
    start += n;
    nan |= t != t;
    best = sel<T>(t > best, t, best);
  }
  return sel<T>(nan, splat(std::numeric_limits<T>::quiet_NaN()), best);
}

// First index (as T) of the minimum over devices per lane (of the first NaN if any) and the
// minimum; jaxsplit.solvers._first_argmin. ``argmax`` gives the first maximum instead.
template <typename T>
void first_arg(int num, const Lanes<T>& x, bool argmax, Vec<T>& pick, Vec<T>& value) {
  pick = splat(T(0));
  value = x[0];
  Mask<T> nan = x[0] != x[0];
  for (int i = 1; i < num; ++i) {
    Vec<T> v = x[i];
    Mask<T> is_nan = v != v;
    Mask<T> better = ~nan & (is_nan | (argmax ? (v > value) : (v < value)));
    pick = sel<T>(better, splat(T(i)), pick);
    value = sel<T>(better, v, value);
    nan |= is_nan;
  }
}

// jaxsplit.solvers.water_fill: the continuous rows n (0 where inactive).
template <typename T>
void water_fill(const Block<T>& b, const Lanes<T>& alpha, const Lanes<T>& beta, Lanes<T>& n) {
  const int num = b.num;
  const Vec<T> zero = splat(T(0)), one = splat(T(1));
  Lanes<T> w, aw;
  Mask<T> inside[kMaxDevices];
  for (int i = 0; i < num; ++i) {
    Mask<T> a = b.active[i];
    w[i] = sel<T>(a, one / sel<T>(a, beta[i], one), zero);
    aw[i] = sel<T>(a, alpha[i] * w[i], zero);
    inside[i] = a;
  }
  auto level_of = [&]() {
    Vec<T> sa = zero, sw = zero;
    for (int i = 0; i < num; ++i) {
      sa += sel<T>(inside[i], aw[i], zero);
      sw += sel<T>(inside[i], w[i], zero);
    }
    Vec<T> total = b.out_height + sa;
    Mask<T> some = sw > zero;
    return sel<T>(some, total / sel<T>(some, sw, one), splat(std::numeric_limits<T>::infinity()));
  };
  Vec<T> level = level_of();
  for (int k = 0; k < num; ++k) {
    Mask<T> dropped = Mask<T>{};
    // The lowest alpha always stays (in exact arithmetic alpha_min < T): a float level may round onto it.
    Vec<T> lowest = splat(std::numeric_limits<T>::infinity());
    for (int i = 0; i < num; ++i) lowest = vmin<T>(lowest, sel<T>(inside[i], alpha[i], lowest));
    for (int i = 0; i < num; ++i) {
      Mask<T> keep = inside[i] & ((alpha[i] < level) | (alpha[i] <= lowest));
      dropped |= keep != inside[i];
      inside[i] = keep;
    }
    if (!any<T>(dropped)) break;
    level = level_of();  // lanes that dropped nothing get the same level again
  }
  for (int i = 0; i < num; ++i) n[i] = sel<T>(b.active[i], vmax<T>(zero, (level - alpha[i]) * w[i]), zero);
}

// jaxsplit.solvers.round_split (with _fix_total).
template <typename T>
void round_split(const Block<T>& b, const Lanes<T>& n, const Lanes<T>& alpha, const Lanes<T>& beta, Lanes<T>& rows) {
  const int num = b.num;
  const Vec<T> zero = splat(T(0)), one = splat(T(1)), inf = splat(std::numeric_limits<T>::infinity());
  Vec<T> left = b.out_height;
  for (int i = 0; i < num; ++i) {
    rows[i] = sel<T>(b.active[i], vfloor<T>(n[i]), zero);
    left -= rows[i];
  }
  Lanes<T> cost;
  Vec<T> pick, value;
  for (int k = 0; k < num && any<T>(left > zero); ++k) {
    for (int i = 0; i < num; ++i) cost[i] = sel<T>(b.active[i], alpha[i] + beta[i] * (rows[i] + one), inf);
    first_arg<T>(num, cost, false, pick, value);
    Mask<T> give = left > zero;
    for (int i = 0; i < num; ++i) rows[i] += sel<T>(give & (pick == T(i)), one, zero);
    left -= one;
  }
  // _fix_total: cut excess from the end, give a deficit to the last active device.
  Vec<T> prev = zero, acc = zero, got = zero, last = splat(T(-1));
  for (int i = 0; i < num; ++i) {
    acc += rows[i];
    Vec<T> end = vmin<T>(acc, b.out_height);
    rows[i] = end - prev;
    prev = end;
    got += rows[i];
    last = sel<T>(b.active[i], splat(T(i)), last);
  }
  for (int i = 0; i < num; ++i) rows[i] += sel<T>(last == T(i), b.out_height - got, zero);
}

// jaxsplit.solvers.closed_form_split for a block: rows, and the exact latency of each lane.
template <typename T>
Vec<T> closed_form(const Block<T>& b, Lanes<T>& out) {
  const int num = b.num;
  const Vec<T> zero = splat(T(0)), one = splat(T(1)), inf = splat(std::numeric_limits<T>::infinity());
  Lanes<T> alpha, beta, alpha_b, n_plain, n;
  for (int i = 0; i < num; ++i) {
    Vec<T> in_row = b.in_row_bytes * b.sec_per_byte[i];
    beta[i] = b.stride * in_row + b.out_row_bytes * b.sec_per_byte[i] + b.row_work * b.sec_per_flop[i];
    alpha[i] = b.message[i] + vmax<T>(b.kernel_extent - b.stride, zero) * in_row;
  }
  water_fill(b, alpha, beta, n_plain);
  // Border-aware intercepts (jaxsplit.solvers.border_intercepts) for the first and last device
  // with n > 0.
  Vec<T> first = splat(T(num)), last = splat(T(-1));
  for (int i = num - 1; i >= 0; --i) first = sel<T>(n_plain[i] > zero, splat(T(i)), first);
  for (int i = 0; i < num; ++i) last = sel<T>(n_plain[i] > zero, splat(T(i)), last);
  const Vec<T> halo = b.kernel_extent - b.stride;
  const Vec<T> h_end = vmin<T>(b.in_height, (b.out_height - one) * b.stride - b.pad_top + b.kernel_extent);
  const Vec<T> extra_first = halo - b.pad_top;
  const Vec<T> extra_last = h_end + b.pad_top - b.out_height * b.stride;
  const Vec<T> extra_both = h_end - b.out_height * b.stride;
  for (int i = 0; i < num; ++i) {
    Vec<T> in_row = b.in_row_bytes * b.sec_per_byte[i];
    Mask<T> is_first = first == T(i), is_last = last == T(i);
    Vec<T> extra = sel<T>(is_first, extra_first, halo);
    extra = sel<T>(is_last, extra_last, extra);
    extra = sel<T>(is_first & is_last, extra_both, extra);
    alpha_b[i] = b.message[i] + extra * in_row;
  }
  water_fill(b, alpha_b, beta, n);
  Lanes<T> rows, times, cand, cand_times, cost;
  round_split(b, n, alpha_b, beta, rows);
  // correct_split: one-row moves from the slowest device, each kept only if the latency falls. A
  // lane whose move is rejected would propose the same move again, so it is done.
  Vec<T> best = device_times(b, rows, times);
  Mask<T> going = ~Mask<T>{};
  for (int round = 0; round < kCorrectionRounds; ++round) {
    Vec<T> slow, slow_value, fast, cheapest;
    first_arg<T>(num, times, true, slow, slow_value);
    for (int i = 0; i < num; ++i) cost[i] = sel<T>(b.active[i] & (slow != T(i)), alpha_b[i] + beta[i] * (rows[i] + one), inf);
    first_arg<T>(num, cost, false, fast, cheapest);
    Vec<T> slow_rows = zero;
    for (int i = 0; i < num; ++i) {
      Mask<T> is_slow = slow == T(i);
      slow_rows += sel<T>(is_slow, rows[i], zero);
      cand[i] = rows[i] - sel<T>(is_slow, one, zero) + sel<T>(fast == T(i), one, zero);
    }
    Vec<T> cand_best = device_times(b, cand, cand_times);
    Mask<T> ok = going & (cand_best < best) & (slow_rows > zero) & (cheapest < inf) & (cheapest > -inf);
    going = ok;
    if (!any<T>(ok)) break;
    best = sel<T>(ok, cand_best, best);
    for (int i = 0; i < num; ++i) {
      rows[i] = sel<T>(ok, cand[i], rows[i]);
      times[i] = sel<T>(ok, cand_times[i], times[i]);
    }
  }
  // Never worse than the plain rule (ties keep the refined rows).
  Lanes<T> plain;
  round_split(b, n_plain, alpha, beta, plain);
  Vec<T> plain_latency = device_times(b, plain, cand_times);
  best = device_times(b, rows, times);
  Mask<T> keep = best <= plain_latency;
  for (int i = 0; i < num; ++i) out[i] = sel<T>(keep, rows[i], plain[i]);
  return sel<T>(keep, best, plain_latency);
}

// Run body(begin, end) over [0, count) in blocks, on the calling thread and XLA's pool.
template <typename Body>
void parallel_blocks(ffi::ThreadPool& pool, int64_t count, int64_t block, Body body) {
  const int64_t blocks = (count + block - 1) / block;
  int64_t helpers = std::min<int64_t>(pool.num_threads(), blocks - 1);
  if (helpers <= 0) {
    body(int64_t(0), count);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto work = [shared, blocks, block, count, body]() {
    for (;;) {
      int64_t b = shared->next.fetch_add(1);
      if (b >= blocks) return;
      body(b * block, std::min(count, (b + 1) * block));
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));
  work();
  while (shared->done.load(std::memory_order_acquire) < blocks) std::this_thread::yield();
}

ffi::Error check_devices(int64_t n) {
  if (n < 1 || n > kMaxDevices)
    return ffi::Error::InvalidArgument("jaxsplit kernel: the number of devices must be in [1, 64]");
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error rows_impl(ffi::ThreadPool pool, ffi::Buffer<D> layers, ffi::Buffer<D> flops, ffi::Buffer<D> bandwidth,
                     ffi::Buffer<D> latency, ffi::Buffer<D> share, ffi::ResultBuffer<ffi::S32> rows) {
  using T = ffi::NativeType<D>;
  constexpr int W = kLanes<T>;
  auto dims = share.dimensions();
  const int64_t num = dims.size() == 0 ? 0 : dims.back();
  if (auto e = check_devices(num); e.failure()) return e;
  const int64_t batch = share.element_count() / num;
  if (layers.element_count() != batch * kFields || flops.element_count() != batch * num ||
      bandwidth.element_count() != batch * num || latency.element_count() != batch * num)
    return ffi::Error::InvalidArgument("jaxsplit closed_form_rows: layers must be (B, 8) and the cluster (B, N)");
  const T* lf = layers.typed_data();
  const T *fl = flops.typed_data(), *bw = bandwidth.typed_data(), *la = latency.typed_data(), *sh = share.typed_data();
  int32_t* out = rows->typed_data();
  parallel_blocks(pool, batch, 1024, [=](int64_t begin, int64_t end) {
    auto block = std::make_unique<Block<T>>();
    auto solved = std::make_unique<Lanes<T>>();
    block->num = int(num);
    for (int64_t b0 = begin; b0 < end; b0 += W) {
      const int used = int(std::min<int64_t>(W, end - b0));
      for (int l = 0; l < W; ++l) {  // spare lanes repeat the block's first instance
        const int64_t b = b0 + (l < used ? l : 0);
        block->set_layer(l, lf + b * kFields);
        block->set_rates(l, fl + b * num, bw + b * num, la + b * num, sh + b * num);
      }
      closed_form(*block, *solved);
      for (int l = 0; l < used; ++l)
        for (int64_t i = 0; i < num; ++i) out[(b0 + l) * num + i] = static_cast<int32_t>((*solved)[i][l]);
    }
  });
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error exec_impl(ffi::ThreadPool pool, ffi::Buffer<D> table, ffi::Buffer<ffi::S32> size, ffi::Buffer<D> flops,
                     ffi::Buffer<D> bandwidth, ffi::Buffer<D> latency, ffi::Buffer<D> share,
                     ffi::Buffer<ffi::S32> model, ffi::ResultBuffer<D> exec) {
  using T = ffi::NativeType<D>;
  constexpr int W = kLanes<T>;
  auto sdims = share.dimensions();
  auto tdims = table.dimensions();
  auto kdims = size.dimensions();
  if (tdims.size() < 2 || tdims.back() != kFields + 1 || kdims.size() == 0)
    return ffi::Error::InvalidArgument("jaxsplit exec_times: table must be (..., T, 9) and size (..., K)");
  const int64_t num = sdims.size() == 0 ? 0 : sdims.back();
  if (auto e = check_devices(num); e.failure()) return e;
  const int64_t rows_per_table = tdims[tdims.size() - 2];
  const int64_t models = kdims.back();
  if (rows_per_table < 1) return ffi::Error::InvalidArgument("jaxsplit exec_times: the layer table is empty");
  const int64_t groups = table.element_count() / (rows_per_table * (kFields + 1));
  const int64_t requests = model.element_count();
  if (models < 1 || rows_per_table % models != 0 || size.element_count() != groups * models || groups < 1 ||
      requests % groups != 0 || share.element_count() != requests * num || flops.element_count() != requests * num ||
      bandwidth.element_count() != requests * num || latency.element_count() != requests * num)
    return ffi::Error::InvalidArgument("jaxsplit exec_times: inconsistent shapes");
  const int64_t width = rows_per_table / models;
  const int64_t per_group = requests / groups;
  const T* tab = table.typed_data();
  const int32_t* sz = size.typed_data();
  const int32_t* md = model.typed_data();
  const T *fl = flops.typed_data(), *bw = bandwidth.typed_data(), *la = latency.typed_data(), *sh = share.typed_data();
  T* out = exec->typed_data();
  parallel_blocks(pool, requests, 256, [=](int64_t begin, int64_t end) {
    // The requests' layers stream through the lanes in order (request by request, layer by layer);
    // each full block is solved and count x latency added to its request.
    auto block = std::make_unique<Block<T>>();
    auto rates = std::make_unique<Block<T>>();  // lane 0: the current request's rates
    auto solved = std::make_unique<Lanes<T>>();
    block->num = rates->num = int(num);
    T weight[W];
    int64_t owner[W];
    int used = 0;
    for (int64_t q = begin; q < end; ++q) out[q] = T(0);
    auto solve = [&]() {
      for (int l = used; l < W; ++l) {  // spare lanes repeat lane 0
        block->copy_layer(l, 0);
        block->copy_rates(l, *block, 0);
      }
      Vec<T> lat = closed_form(*block, *solved);
      for (int l = 0; l < used; ++l) out[owner[l]] += weight[l] * lat[l];
      used = 0;
    };
    for (int64_t q = begin; q < end; ++q) {
      const int64_t g = q / per_group;
      const int64_t k = std::clamp<int64_t>(md[q], 0, models - 1);
      const int64_t count = std::clamp<int64_t>(sz[g * models + k], 0, width);
      const T* layer = tab + (g * rows_per_table + k * width) * (kFields + 1);
      rates->set_rates(0, fl + q * num, bw + q * num, la + q * num, sh + q * num);
      for (int64_t j = 0; j < count; ++j, layer += kFields + 1) {
        block->set_layer(used, layer);
        block->copy_rates(used, *rates, 0);
        owner[used] = q;
        weight[used] = layer[kFields];
        if (++used == W) solve();
      }
    }
    if (used > 0) solve();
  });
  return ffi::Error::Success();
}

}  // namespace

// The column order the handlers assume (comma-separated), checked by jaxsplit.kernels on load.
extern "C" const char* jaxsplit_table_fields() { return kTableFields; }

#define JAXSPLIT_ROWS(name, D)                                                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, rows_impl<D>,                                                 \
                                ffi::Ffi::Bind()                                                    \
                                    .Ctx<ffi::ThreadPool>()                                         \
                                    .Arg<ffi::Buffer<D>>()                                          \
                                    .Arg<ffi::Buffer<D>>()                                          \
                                    .Arg<ffi::Buffer<D>>()                                          \
                                    .Arg<ffi::Buffer<D>>()                                          \
                                    .Arg<ffi::Buffer<D>>()                                          \
                                    .Ret<ffi::Buffer<ffi::S32>>());

#define JAXSPLIT_EXEC(name, D)                                                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, exec_impl<D>,                                                 \
                                ffi::Ffi::Bind()                                                    \
                                    .Ctx<ffi::ThreadPool>()                                         \
                                    .Arg<ffi::Buffer<D>>()                                          \
                                    .Arg<ffi::Buffer<ffi::S32>>()                                   \
                                    .Arg<ffi::Buffer<D>>()                                          \
                                    .Arg<ffi::Buffer<D>>()                                          \
                                    .Arg<ffi::Buffer<D>>()                                          \
                                    .Arg<ffi::Buffer<D>>()                                          \
                                    .Arg<ffi::Buffer<ffi::S32>>()                                   \
                                    .Ret<ffi::Buffer<D>>());

JAXSPLIT_ROWS(JaxsplitClosedFormRowsF32, ffi::F32)
JAXSPLIT_ROWS(JaxsplitClosedFormRowsF64, ffi::F64)
JAXSPLIT_EXEC(JaxsplitExecTimesF32, ffi::F32)
JAXSPLIT_EXEC(JaxsplitExecTimesF64, ffi::F64)
