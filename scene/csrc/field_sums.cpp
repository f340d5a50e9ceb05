// The factored kernel field's two sparse sums (scene/language_field.py, KernelField._cpp_dots), the
// hot part of a text query at a million Gaussians:
//   weighted_sum: out[o(n), :] = sum_k w[n, k] table[idx[n, k], :]         (the anchors' kernel weights)
//   scaled_sum:   out[o(n), :] = scale[n] sum_k table[idx[n, k], :]        (the neighbour average)
// with Q (the table's columns) 8, 16 or 32, out's first columns only, and o(n) = out_rows[n] (the
// field's rows -> Gaussian order, sparing a reordering pass) or n when out_rows is empty.
// Registered as torch custom ops `cos3d_field::*`, loaded by gaussian_renderer/extension.py. This file trusts its inputs: scene/language_field.py passes
// float32 / int32 contiguous CPU tensors, and KernelField checks once, when it is built, that every
// index lies inside its table (a check here, per gathered row, costs half the speed).
//
// Speed: a row's sum over k is a chain of dependent adds; kRowsAtOnce rows are summed side by side so
// the chains overlap (the gathers stay in the table's cache). Each row's sum runs in index order, as
// torch's embedding_bag does, so the result is the same whatever the thread count.
#include <ATen/core/Tensor.h>
#include <torch/library.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int kRowsAtOnce = 4;

// An AVX-512, an AVX2/FMA and a baseline clone, picked at load time (GCC ifunc; as in
// gaussian_renderer/csrc/rasterize.cpp), so the build needs no -march=native.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define COS3D_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define COS3D_CLONES
#endif

// Rows n0 .. n0 + G - 1 (G a compile-time count, so their sums stay in registers). WEIGHTED: each
// gathered row times w[n, k]; else the sum times scale[n] (= w[n]). out: rows of Qout <= Q columns,
// row n written to row orow[n] (orow null: row n).
template <int Q, int G, bool WEIGHTED>
static inline void sum_rows(const int32_t* idx, const float* w, const float* table, float* out, int Qout,
                            const int32_t* orow, int64_t n0, int K) {
    float acc[G][Q] = {};
    for (int k = 0; k < K; ++k)
        for (int h = 0; h < G; ++h) {
            const int64_t e = (n0 + h) * K + k;
            const float* row = table + int64_t(idx[e]) * Q;
            if (WEIGHTED) {
                const float wk = w[e];
                #pragma omp simd
                for (int q = 0; q < Q; ++q) acc[h][q] += wk * row[q];
            } else {
                #pragma omp simd
                for (int q = 0; q < Q; ++q) acc[h][q] += row[q];
            }
        }
    for (int h = 0; h < G; ++h) {
        const float s = WEIGHTED ? 1.f : w[n0 + h];
        float* o = out + (orow ? int64_t(orow[n0 + h]) : n0 + h) * Qout;
        for (int q = 0; q < Qout; ++q) o[q] = WEIGHTED ? acc[h][q] : acc[h][q] * s;
    }
}

template <int Q, bool WEIGHTED>
COS3D_CLONES void sparse_sum(const int32_t* idx, const float* w, const float* table, float* out, int Qout,
                             const int32_t* orow, int64_t N, int K, int nthreads) {
    const int64_t full = N / kRowsAtOnce * kRowsAtOnce;
#pragma omp parallel for num_threads(nthreads) schedule(static, 1024)
    for (int64_t n0 = 0; n0 < full; n0 += kRowsAtOnce)
        sum_rows<Q, kRowsAtOnce, WEIGHTED>(idx, w, table, out, Qout, orow, n0, K);
    for (int64_t n = full; n < N; ++n) sum_rows<Q, 1, WEIGHTED>(idx, w, table, out, Qout, orow, n, K);
}

template <bool WEIGHTED>
void dispatch(const at::Tensor& idx, const at::Tensor& w, const at::Tensor& table, at::Tensor& out,
              const at::Tensor& out_rows, int64_t nthreads) {
    const int32_t* ix = idx.data_ptr<int32_t>();
    const float* wp = w.data_ptr<float>();
    const float* tp = table.data_ptr<float>();
    float* op = out.data_ptr<float>();
    const int32_t* orow = out_rows.numel() ? out_rows.data_ptr<int32_t>() : nullptr;
    const int64_t N = idx.size(0), Q = table.size(1);
    const int K = int(idx.size(1)), Qout = int(out.size(1)), nt = int(std::max<int64_t>(1, nthreads));
    switch (Q) {  // the widths scene/language_field.py pads to (wider tables come in blocks of 32)
        case 8: return sparse_sum<8, WEIGHTED>(ix, wp, tp, op, Qout, orow, N, K, nt);
        case 16: return sparse_sum<16, WEIGHTED>(ix, wp, tp, op, Qout, orow, N, K, nt);
        case 32: return sparse_sum<32, WEIGHTED>(ix, wp, tp, op, Qout, orow, N, K, nt);
        default: TORCH_CHECK(false, "cos3d_field: the table must have 8, 16 or 32 columns, got ", Q);
    }
}

// out [N, Qout]: the first Qout columns of the sums (Qout <= the table's columns)
void weighted_sum(const at::Tensor& idx, const at::Tensor& weight, const at::Tensor& table, at::Tensor out,
                  const at::Tensor& out_rows, int64_t nthreads) {
    dispatch<true>(idx, weight, table, out, out_rows, nthreads);
}

void scaled_sum(const at::Tensor& idx, const at::Tensor& scale, const at::Tensor& table, at::Tensor out,
                const at::Tensor& out_rows, int64_t nthreads) {
    dispatch<false>(idx, scale, table, out, out_rows, nthreads);
}

}  // namespace

TORCH_LIBRARY(cos3d_field, m) {
    m.def("weighted_sum(Tensor idx, Tensor weight, Tensor table, Tensor(a!) out, Tensor out_rows, int nthreads) -> ()");
    m.def("scaled_sum(Tensor idx, Tensor scale, Tensor table, Tensor(a!) out, Tensor out_rows, int nthreads) -> ()");
}

TORCH_LIBRARY_IMPL(cos3d_field, CPU, m) {
    m.impl("weighted_sum", &weighted_sum);
    m.impl("scaled_sum", &scaled_sum);
}
