// CPU tile rasterizer for 2D Gaussians (3DGS alpha compositing), forward and hand-written backward.
//
// Registered as torch custom ops `cos3d_raster::rasterize_fwd` / `::rasterize_bwd` (loaded by
// gaussian_renderer/cpp_backend.py, which allocates every output and validates shapes/dtypes;
// this file trusts its inputs). All float tensors are float32, contiguous, on the CPU.
//
// Maths: the 3DGS compositing of gsplat 1.5.3 (RasterizeToPixels3DGSFwd.cu / Bwd.cu), re-written for
// a CPU: one tile at a time per OpenMP thread, vectorised over the tile pixels a Gaussian reaches.
//   pixel centre p = (x + 0.5, y + 0.5); d = mean2d - p
//   sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy;          skip if sigma < 0
//   alpha = min(max_alpha, opacity * exp(-sigma));    skip if alpha < 1/255
//   next_T = T (1 - alpha); if next_T <= 1e-4 the pixel stops (this Gaussian is not composited)
//   color += alpha T c; T = next_T.  Output color + T bg, final T, last contributor per pixel.
// The backward walks each tile back-to-front, recovering T by dividing by (1 - alpha) (as gsplat
// does), with no gradient through the max_alpha clamp.
// Determinism: both passes give bit-identical results whatever the thread count or scheduling.
// The forward writes each pixel from exactly one tile. The backward writes each tile's gradient
// contribution per Gaussian into a slot of that tile, then sums the slots of each Gaussian in tile
// order (no atomics, no per-thread partial sums): see backward_impl.
#include <ATen/core/Tensor.h>
#include <torch/library.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

namespace {

constexpr float kAlphaMin = 1.f / 255.f;  // gsplat Common.h ALPHA_THRESHOLD
constexpr float kTMin = 1e-4f;            // gsplat fwd kernel: stop when next_T <= 1e-4
constexpr int kGradStride = 6;            // per Gaussian: d mean (2), d conic (3), d opacity (1)

// Portable multi-versioning: an AVX2/FMA and an AVX-512 clone of the hot loops, picked at load time
// (GCC ifunc), so the build needs no -march=native and survives a cache reused on another CPU.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define COS3D_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define COS3D_CLONES
#endif
// Force inlining of the small helpers into the hot loops (an out-of-line call stops vectorisation).
#define COS3D_INLINE inline __attribute__((always_inline))

// exp(x) for x <= 0 in float32, vectorisable (no libm call): Cephes expf range reduction
// (x = n ln2 + r, ln2 split in two constants) and its degree-6 minimax polynomial (~1 ulp).
// x is clamped to [-87.3, 0] (callers skip sigma < 0 anyway, like the torch reference's clamp).
static COS3D_INLINE float exp_neg(float x) {
    x = std::min(std::max(x, -87.3f), 0.f);
    const float fx = x * 1.44269504088896341f + 0.5f;
    int n = static_cast<int>(fx);
    n -= (static_cast<float>(n) > fx) ? 1 : 0;  // floor
    const float fn = static_cast<float>(n);
    const float r = (x - fn * 0.693359375f) - fn * (-2.12194440e-4f);
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * r * r + r + 1.f;
    int32_t bits = (n + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(float));
    return y * scale;
}

struct Scene {
    const float* means2d;    // [N,2]
    const float* conics;     // [N,3]
    const float* opac;       // [N]
    const float* colors;     // [N,D]
    const float* bg;         // [D]
    const int64_t* offsets;  // [n_tiles+1]
    const int64_t* ids;      // [M]
    const float* ext;        // [N,4] bounds of the alpha >= 1/255 region (compute_extents)
    int W, H, D, tiles_x;
    float max_alpha;
};

// Conservative bounds of {p : opacity * exp(-sigma(p)) >= 1/255}, i.e. sigma <= s = log(255 opacity),
// an ellipse 0.5 d^T Q d <= s (Q = [[a,b],[b,c]]): half extents |dx| <= sqrt(2 s Q^-1_xx), |dy| <=
// sqrt(2 s Q^-1_yy). Stored per Gaussian: {ex, ey, 2s}; ex = ey = -1 if it can never reach 1/255,
// +inf if Q is not positive definite (then only the exact per-pixel test decides). s gets 0.1 % +
// 1e-3 of slack and the extents one pixel, so rounding never drops a pixel that the exact per-pixel
// test (which always decides) would keep: these bounds only skip work.
static void compute_extents(const Scene& S, int64_t N, float* ext, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t g = 0; g < N; ++g) {
        const double o = S.opac[g];
        const double a = S.conics[3 * g], b = S.conics[3 * g + 1], c = S.conics[3 * g + 2];
        const double det = a * c - b * b;
        const double inf = std::numeric_limits<double>::infinity();
        double ex = inf, ey = inf, s2 = inf;
        if (!(o * 1.001 >= kAlphaMin)) {  // also catches NaN opacity
            ex = ey = s2 = -1.0;
        } else if (a > 0 && det > 0 && std::isfinite(det)) {
            const double s = std::max(std::log(255.0 * o), 0.0) * 1.001 + 1e-3;
            ex = std::sqrt(2.0 * s * c / det) + 1.0;
            ey = std::sqrt(2.0 * s * a / det) + 1.0;
            s2 = 2.0 * s;
        }
        ext[4 * g] = static_cast<float>(ex);
        ext[4 * g + 1] = static_cast<float>(ey);
        ext[4 * g + 2] = static_cast<float>(s2);
        ext[4 * g + 3] = 0.f;
    }
}

// Range [lo, hi] (inclusive, clipped to [0, n-1]) of tile pixel rows/cols whose centre lies within
// `e` of `m`. Empty when lo > hi.
static COS3D_INLINE void span(float m, float e, int origin, int n, int& lo, int& hi) {
    if (!(m == m)) { lo = 0; hi = -1; return; }  // NaN mean: the per-pixel test rejects every pixel
    if (!(e < 1e30f)) { lo = 0; hi = n - 1; return; }
    const float l = std::ceil(m - e - float(origin) - 0.5f), h = std::floor(m + e - float(origin) - 0.5f);
    lo = l < 0.f ? 0 : (l > float(n) ? n : int(l));
    hi = h > float(n - 1) ? n - 1 : (h < -1.f ? -1 : int(h));
}

// Per-Gaussian constants of row_hits: the ellipse's chord at row offset dy = my - py is
// a dx^2 + 2 b dy dx + c dy^2 <= 2 s, i.e. pixel-centre x in mx + (b dy +- sqrt(a 2s - det dy^2)) / a.
struct Chord {
    float as2, det, inv_a, mx;
    bool bounded;
};
static COS3D_INLINE Chord make_chord(float a, float b, float c, float s2, float mx) {
    Chord ch;
    ch.bounded = s2 < 1e30f;  // positive definite (compute_extents)
    ch.as2 = a * s2;
    ch.det = a * c - b * b;
    ch.inv_a = 1.f / a;
    ch.mx = mx;
    return ch;
}
// Does the row reach any of the pixel centres px0 .. px0 + cols - 1 (one pixel of margin)? Float
// rounding here is far below the slack in s (see compute_extents), so no reachable pixel is dropped.
static COS3D_INLINE bool row_hits(const Chord& ch, float b, float dy, float px0, int cols) {
    if (!ch.bounded) return true;
    const float q = ch.as2 - ch.det * dy * dy;
    if (q < 0.f) return false;
    const float half = std::sqrt(q) * ch.inv_a, mid = ch.mx + b * dy * ch.inv_a;
    return mid + half >= px0 - 1.f && mid - half <= px0 + float(cols);
}

// Composite one Gaussian over n consecutive tile pixels starting at flat index p0 (row-major, TS
// columns); (px0, py0) is the centre of pixel 0 of the tile. Returns how many pixels stopped.
template <int TS>
static COS3D_INLINE int fwd_pixels(float* __restrict T, int32_t* __restrict last,
                                   int32_t* __restrict done, float* __restrict w, int n, int p0, float mx, float my, float px0,
                                   float py0, float a, float b, float c, float o, float max_alpha,
                                   int32_t local) {
    int stopped = 0;
    for (int q = 0; q < n; ++q) {
        const int p = p0 + q;
        const float dx = mx - (px0 + float(p % TS));  // pixel centres are exact in float
        const float dy = my - (py0 + float(p / TS));
        const float sigma = 0.5f * (a * dx * dx + c * dy * dy) + b * dx * dy;
        const float alpha = std::min(max_alpha, o * exp_neg(-sigma));
        const bool ok = (sigma >= 0.f) & (alpha >= kAlphaMin) & (done[q] == 0);
        const float nt = T[q] * (1.f - alpha);
        const bool stop = ok & (nt <= kTMin);
        const bool use = ok & !(nt <= kTMin);
        w[q] = use ? alpha * T[q] : 0.f;
        T[q] = use ? nt : T[q];
        last[q] = use ? local : last[q];
        done[q] = stop ? 1 : done[q];
        stopped += stop;
    }
    return stopped;
}

// ---------------------------------------------------------------------------------------------
// forward: one tile. scratch: D*TS*TS floats. TS is a power of two.
// Each Gaussian is evaluated on the tile rows [r_lo, r_hi] its alpha >= 1/255 ellipse can reach, as
// one flat loop over those pixels (independent iterations: vectorised, no per-row branches).
template <int TS>
COS3D_CLONES void forward_tile(const Scene& S, int tile, float* scratch, float* out_color,
                               float* out_T, int32_t* out_last) {
    static_assert((TS & (TS - 1)) == 0, "tile size must be a power of two");
    constexpr int NP = TS * TS;
    alignas(64) float T[NP];
    alignas(64) int32_t last[NP];
    alignas(64) int32_t done[NP];
    alignas(64) float w[NP];
    const int D = S.D;
    float* acc = scratch;  // [D][NP]
    const int x0 = (tile % S.tiles_x) * TS, y0 = (tile / S.tiles_x) * TS;
    const int rows = std::min(TS, S.H - y0), cols = std::min(TS, S.W - x0);
    const float px0 = float(x0) + 0.5f, py0 = float(y0) + 0.5f;
    int active = 0;
    for (int p = 0; p < NP; ++p) {
        const bool in = (p / TS) < rows && (p % TS) < cols;
        T[p] = 1.f;
        last[p] = -1;
        done[p] = in ? 0 : 1;
        active += in;
    }
    std::fill(acc, acc + size_t(D) * NP, 0.f);

    const int64_t start = S.offsets[tile], end = S.offsets[tile + 1];
    const float max_alpha = S.max_alpha;
    for (int64_t idx = start; idx < end && active > 0; ++idx) {
        const int64_t g = S.ids[idx];
        const float ex = S.ext[4 * g], ey = S.ext[4 * g + 1], s2 = S.ext[4 * g + 2];
        if (ey < 0.f) continue;
        const float mx = S.means2d[2 * g], my = S.means2d[2 * g + 1];
        int c_lo, c_hi, r_lo, r_hi;
        span(mx, ex, x0, cols, c_lo, c_hi);
        span(my, ey, y0, rows, r_lo, r_hi);
        if (c_lo > c_hi || r_lo > r_hi) continue;
        const float a = S.conics[3 * g], b = S.conics[3 * g + 1], c = S.conics[3 * g + 2];
        const Chord chord = make_chord(a, b, c, s2, mx);
        while (r_lo <= r_hi && !row_hits(chord, b, my - (py0 + float(r_lo)), px0, cols)) ++r_lo;
        while (r_hi >= r_lo && !row_hits(chord, b, my - (py0 + float(r_hi)), px0, cols)) --r_hi;
        if (r_lo > r_hi) continue;
        const float o = S.opac[g];
        const float* col = S.colors + g * D;
        const int32_t local = int32_t(idx - start);
        const int p_lo = r_lo * TS, p_hi = (r_hi + 1) * TS;
        const int n = p_hi - p_lo;
        float* wp = w + p_lo;
        active -= fwd_pixels<TS>(T + p_lo, last + p_lo, done + p_lo, wp, n, p_lo, mx, my, px0, py0, a,
                                 b, c, o, max_alpha, local);
        for (int k = 0; k < D; ++k) {
            const float ck = col[k];
            float* ak = acc + size_t(k) * NP + p_lo;
            for (int q = 0; q < n; ++q) ak[q] += wp[q] * ck;
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int i = 0; i < cols; ++i) {
            const int64_t pix = int64_t(y0 + r) * S.W + (x0 + i);
            const float t = T[r * TS + i];
            out_T[pix] = t;
            out_last[pix] = last[r * TS + i];
            for (int k = 0; k < D; ++k)
                out_color[pix * D + k] = acc[size_t(k) * NP + r * TS + i] + t * S.bg[k];
        }
}

// ---------------------------------------------------------------------------------------------
// backward helpers, over n consecutive tile pixels from flat index p0 (like fwd_pixels).
// With out = sum_i c_i alpha_i T_i + T_f bg, T_i = prod_{j<i} (1 - alpha_j), alpha_out = 1 - T_f:
//   d out / d alpha_i = c_i T_i - (sum_{j>i} c_j alpha_j T_j + T_f bg) / (1 - alpha_i)
//   d alpha_out / d alpha_i = T_f / (1 - alpha_i)
// The sum over j > i is the "composited behind" buffer, built while walking back to front.

// Per-pixel quantities of one Gaussian, walking back to front: recovers the transmittance in front
// of it (T /= 1 - alpha) for the pixels it was composited on (valid: local <= last contributor and
// the forward's skip tests pass). Invalid pixels get zeros (and oe = 2: no geometry gradient).
template <int TS>
static COS3D_INLINE int bwd_pixels(float* __restrict T, const int32_t* __restrict last,
                                   const float* __restrict base, float* __restrict dxs,
                                   float* __restrict dys, float* __restrict es, float* __restrict oes,
                                   float* __restrict fac, float* __restrict ras, float* __restrict tns,
                                   float* __restrict va, int n, int p0, float mx, float my, float px0,
                                   float py0, float a, float b, float c, float o, float max_alpha,
                                   int32_t local) {
    int any = 0;
    for (int q = 0; q < n; ++q) {
        const int p = p0 + q;
        const float dx = mx - (px0 + float(p % TS));
        const float dy = my - (py0 + float(p / TS));
        const float sigma = 0.5f * (a * dx * dx + c * dy * dy) + b * dx * dy;
        const float e = exp_neg(-sigma);
        const float oe = o * e;
        const float alpha = std::min(max_alpha, oe);
        const bool valid = (local <= last[q]) & (sigma >= 0.f) & (alpha >= kAlphaMin);
        const float ra = 1.f / (1.f - alpha);
        const float tn = T[q] * ra;  // transmittance in front of this Gaussian
        dxs[q] = dx;
        dys[q] = dy;
        es[q] = valid ? e : 0.f;
        oes[q] = valid ? oe : 2.f;  // 2 > max_alpha: treated as clamped
        fac[q] = valid ? alpha * tn : 0.f;
        ras[q] = valid ? ra : 0.f;
        tns[q] = valid ? tn : 0.f;
        va[q] = valid ? base[q] * ra : 0.f;  // d loss / d alpha, alpha-out and bg terms
        T[q] = valid ? tn : T[q];
        any += valid;
    }
    return any;
}

// Channel k: adds this channel's term to d loss / d alpha (va), the Gaussian's colour to the
// "composited behind" buffer, and returns d loss / d colour_k of the Gaussian.
static COS3D_INLINE float bwd_channel(const float* __restrict vk, float* __restrict bk,
                                      float* __restrict va, const float* __restrict fac,
                                      const float* __restrict tns, const float* __restrict ras,
                                      float ck, int n) {
    float gk = 0.f;
#pragma omp simd reduction(+ : gk)
    for (int q = 0; q < n; ++q) {
        gk += fac[q] * vk[q];
        va[q] += (ck * tns[q] - bk[q] * ras[q]) * vk[q];
        bk[q] += ck * fac[q];
    }
    return gk;
}

// Geometry gradients (mean 2, conic 3, opacity 1) summed over the pixels; no gradient through the
// max_alpha clamp (as gsplat: only where opacity * exp(-sigma) <= max_alpha).
static COS3D_INLINE void bwd_geometry(const float* __restrict dxs, const float* __restrict dys,
                                      const float* __restrict es, const float* __restrict oes,
                                      const float* __restrict va, float a, float b, float c,
                                      float max_alpha, int n, float* out6) {
    float smx = 0.f, smy = 0.f, sa = 0.f, sb = 0.f, sc = 0.f, so = 0.f;
#pragma omp simd reduction(+ : smx, smy, sa, sb, sc, so)
    for (int q = 0; q < n; ++q) {
        const bool unclamped = oes[q] <= max_alpha;
        const float vs = unclamped ? -oes[q] * va[q] : 0.f;  // d loss / d sigma
        const float dx = dxs[q], dy = dys[q];
        sa += 0.5f * vs * dx * dx;
        sb += vs * dx * dy;
        sc += 0.5f * vs * dy * dy;
        smx += vs * (a * dx + b * dy);
        smy += vs * (b * dx + c * dy);
        so += unclamped ? es[q] * va[q] : 0.f;
    }
    out6[0] = smx; out6[1] = smy; out6[2] = sa; out6[3] = sb; out6[4] = sc; out6[5] = so;
}

// backward: one tile. scratch: 2*D*TS*TS floats. The tile owns slots [offsets[tile], offsets[tile+1])
// (less slot0): its k-th Gaussian with a gradient gets slot s = offsets[tile] - slot0 + k, with
// slots[s] = [6 + D] (d mean x, y, d conic a, b, c, d opacity, d colors) and slot_g[s] = its id.
// Returns k, the number of slots written.
template <int TS>
COS3D_CLONES int64_t backward_tile(const Scene& S, int tile, const float* T_final, const int32_t* last_in,
                                   const float* v_color, const float* v_alpha, float* scratch,
                                   float* slots, int32_t* slot_g, int64_t slot0) {
    constexpr int NP = TS * TS;
    alignas(64) float T[NP];
    alignas(64) int32_t last[NP];
    alignas(64) float base[NP];  // T_final (v_alpha_out - bg . v_color): alpha-out and bg terms
    alignas(64) float dxs[NP], dys[NP], es[NP], oes[NP], fac[NP], ras[NP], tns[NP], va[NP];
    const int D = S.D;
    float* vc = scratch;               // [D][NP] d loss / d colour of each pixel
    float* buf = vc + size_t(D) * NP;  // [D][NP] colour composited behind the current Gaussian
    const int x0 = (tile % S.tiles_x) * TS, y0 = (tile / S.tiles_x) * TS;
    const int rows = std::min(TS, S.H - y0), cols = std::min(TS, S.W - x0);
    const float px0 = float(x0) + 0.5f, py0 = float(y0) + 0.5f;
    int32_t max_last = -1;
    int32_t row_last[TS];  // last contributor of each row (-1: none)
    for (int r = 0; r < TS; ++r) {
        row_last[r] = -1;
        for (int i = 0; i < TS; ++i) {
            const int p = r * TS + i;
            T[p] = 1.f;
            last[p] = -1;
            base[p] = 0.f;
            for (int k = 0; k < D; ++k) vc[size_t(k) * NP + p] = 0.f, buf[size_t(k) * NP + p] = 0.f;
            if (r >= rows || i >= cols) continue;
            const int64_t pix = int64_t(y0 + r) * S.W + (x0 + i);
            const float tf = T_final[pix];
            float bgdot = 0.f;
            for (int k = 0; k < D; ++k) {
                const float v = v_color[pix * D + k];
                vc[size_t(k) * NP + p] = v;
                bgdot += v * S.bg[k];
            }
            T[p] = tf;
            last[p] = last_in[pix];
            base[p] = tf * (v_alpha[pix] - bgdot);  // alpha_out = 1 - T_f; out += T_f bg
            row_last[r] = std::max(row_last[r], last[p]);
        }
        max_last = std::max(max_last, row_last[r]);
    }

    const int64_t start = S.offsets[tile];
    const float max_alpha = S.max_alpha;
    int64_t n_used = 0;
    for (int32_t local = max_last; local >= 0; --local) {
        const int64_t g = S.ids[start + local];
        const float ex = S.ext[4 * g], ey = S.ext[4 * g + 1], s2 = S.ext[4 * g + 2];
        if (ey < 0.f) continue;
        const float mx = S.means2d[2 * g], my = S.means2d[2 * g + 1];
        int c_lo, c_hi, r_lo, r_hi;
        span(mx, ex, x0, cols, c_lo, c_hi);
        span(my, ey, y0, rows, r_lo, r_hi);
        if (c_lo > c_hi || r_lo > r_hi) continue;
        const float a = S.conics[3 * g], b = S.conics[3 * g + 1], c = S.conics[3 * g + 2];
        const Chord chord = make_chord(a, b, c, s2, mx);
        while (r_lo <= r_hi && (row_last[r_lo] < local ||
                                !row_hits(chord, b, my - (py0 + float(r_lo)), px0, cols))) ++r_lo;
        while (r_hi >= r_lo && (row_last[r_hi] < local ||
                                !row_hits(chord, b, my - (py0 + float(r_hi)), px0, cols))) --r_hi;
        if (r_lo > r_hi) continue;
        const float o = S.opac[g];
        const float* col = S.colors + g * D;
        const int p0 = r_lo * TS, n = (r_hi + 1 - r_lo) * TS;
        const int any = bwd_pixels<TS>(T + p0, last + p0, base + p0, dxs, dys, es, oes, fac, ras, tns,
                                       va, n, p0, mx, my, px0, py0, a, b, c, o, max_alpha, local);
        if (!any) continue;
        const int64_t slot = start - slot0 + n_used++;
        slot_g[slot] = int32_t(g);
        float* gg = slots + slot * (kGradStride + D);
        for (int k = 0; k < D; ++k)
            gg[kGradStride + k] = bwd_channel(vc + size_t(k) * NP + p0, buf + size_t(k) * NP + p0, va,
                                               fac, tns, ras, col[k], n);
        bwd_geometry(dxs, dys, es, oes, va, a, b, c, max_alpha, n, gg);
    }
    return n_used;
}

// ---------------------------------------------------------------------------------------------
Scene make_scene(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac,
                 const at::Tensor& colors, const at::Tensor& bg, const at::Tensor& offsets,
                 const at::Tensor& ids, int64_t width, int64_t height, int64_t tile_size,
                 double max_alpha) {
    Scene S;
    S.means2d = means2d.data_ptr<float>();
    S.conics = conics.data_ptr<float>();
    S.opac = opac.data_ptr<float>();
    S.colors = colors.data_ptr<float>();
    S.bg = bg.data_ptr<float>();
    S.offsets = offsets.data_ptr<int64_t>();
    S.ids = ids.data_ptr<int64_t>();
    S.ext = nullptr;
    S.W = int(width);
    S.H = int(height);
    S.D = int(colors.size(1));
    S.tiles_x = int((width + tile_size - 1) / tile_size);
    S.max_alpha = float(max_alpha);
    return S;
}

template <int TS>
void forward_impl(Scene& S, int64_t N, int n_tiles, int nthreads, float* color, float* T, int32_t* last,
                  float* ext) {
    compute_extents(S, N, ext, nthreads);
    S.ext = ext;
    // Any schedule gives the same bits: each pixel is written once, by its own tile, from that tile's
    // list alone.
#pragma omp parallel num_threads(nthreads)
    {
        std::vector<float> scratch(size_t(S.D) * TS * TS);
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < n_tiles; ++t) forward_tile<TS>(S, t, scratch.data(), color, T, last);
    }
}

// Memory for the per-intersection gradient slots; a larger scene runs in chunks of whole tiles.
// COS3D_RASTER_SLOT_BYTES overrides it (the tests use it to exercise the chunking).
static size_t slot_budget() {
    const char* env = std::getenv("COS3D_RASTER_SLOT_BYTES");
    const unsigned long long v = env ? std::strtoull(env, nullptr, 10) : 0;
    return v > 0 ? size_t(v) : size_t(512) << 20;
}

// Deterministic backward: pass 1 (tiles, any schedule) writes each intersection's gradient into a
// slot of its tile; pass 2 adds, per Gaussian, its slots in tile order onto the output (a Gaussian
// meets a tile at most once). The float sums are thus the same bits for any thread count, schedule
// or chunking.
template <int TS>
void backward_impl(Scene& S, int64_t N, int n_tiles, int nthreads, const float* T_final,
                   const int32_t* last, const float* v_color, const float* v_alpha, float* v_means2d,
                   float* v_conics, float* v_opac, float* v_colors, const float* ext) {
    S.ext = ext;
    const int D = S.D;
    const int64_t stride = kGradStride + D;
    const int64_t M = S.offsets[n_tiles];
    // slots per chunk: the memory budget, but at least the longest tile list, at most M
    int64_t cap = std::max<int64_t>(1, int64_t(slot_budget() / (size_t(stride) * sizeof(float))));
    for (int t = 0; t < n_tiles; ++t) cap = std::max(cap, S.offsets[t + 1] - S.offsets[t]);
    cap = std::max<int64_t>(1, std::min(cap, M));
    std::unique_ptr<float[]> slots(new float[size_t(cap) * stride]);  // written before read
    std::unique_ptr<int32_t[]> slot_g(new int32_t[size_t(cap)]);
    std::vector<int64_t> tile_slots(static_cast<size_t>(n_tiles));  // slots written by each tile
    // Gaussian blocks of pass 2: each scans all the chunk's slots, so keep them few
    const int64_t n_blocks = std::max<int64_t>(1, std::min<int64_t>(N, 2 * int64_t(nthreads)));

    // outputs of Gaussians [g0, g0 + n) <-> acc [n][stride]
    auto load = [&](int64_t g0, int64_t n, float* acc) {
        for (int64_t i = 0; i < n; ++i) {
            const int64_t g = g0 + i;
            float* a = acc + i * stride;
            a[0] = v_means2d[2 * g], a[1] = v_means2d[2 * g + 1];
            for (int j = 0; j < 3; ++j) a[2 + j] = v_conics[3 * g + j];
            a[5] = v_opac[g];
            for (int k = 0; k < D; ++k) a[kGradStride + k] = v_colors[g * D + k];
        }
    };
    auto store = [&](int64_t g0, int64_t n, const float* acc) {
        for (int64_t i = 0; i < n; ++i) {
            const int64_t g = g0 + i;
            const float* a = acc + i * stride;
            v_means2d[2 * g] = a[0], v_means2d[2 * g + 1] = a[1];
            for (int j = 0; j < 3; ++j) v_conics[3 * g + j] = a[2 + j];
            v_opac[g] = a[5];
            for (int k = 0; k < D; ++k) v_colors[g * D + k] = a[kGradStride + k];
        }
    };

    if (n_tiles == 0) {
        const std::vector<float> zeros(size_t(N) * stride, 0.f);
        store(0, N, zeros.data());
    }
    for (int t0 = 0; t0 < n_tiles;) {
        const int64_t base = S.offsets[t0];
        int t1 = t0 + 1;  // chunk: tiles [t0, t1), at most cap intersections
        while (t1 < n_tiles && S.offsets[t1 + 1] - base <= cap) ++t1;
#pragma omp parallel num_threads(nthreads)
        {
            std::vector<float> scratch(size_t(2 * D) * TS * TS);
#pragma omp for schedule(dynamic, 1)
            for (int t = t0; t < t1; ++t)
                tile_slots[t] = backward_tile<TS>(S, t, T_final, last, v_color, v_alpha, scratch.data(),
                                                  slots.get(), slot_g.get(), base);
            // implicit barrier: all slots written
            std::vector<float> acc;
#pragma omp for schedule(dynamic, 1)
            for (int64_t blk = 0; blk < n_blocks; ++blk) {
                const int64_t g_lo = N * blk / n_blocks, g_hi = N * (blk + 1) / n_blocks;
                acc.assign(size_t(g_hi - g_lo) * stride, 0.f);
                if (t0 > 0) load(g_lo, g_hi - g_lo, acc.data());
                for (int t = t0; t < t1; ++t) {
                    const int64_t s0 = S.offsets[t] - base;
                    for (int64_t s = s0; s < s0 + tile_slots[t]; ++s) {
                        const int64_t g = slot_g[s];
                        if (g < g_lo || g >= g_hi) continue;
                        const float* sl = slots.get() + s * stride;
                        float* a = acc.data() + (g - g_lo) * stride;
                        for (int64_t j = 0; j < stride; ++j) a[j] += sl[j];
                    }
                }
                store(g_lo, g_hi - g_lo, acc.data());
            }
        }
        t0 = t1;
    }
}

void forward_op(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac,
                const at::Tensor& colors, const at::Tensor& bg, const at::Tensor& offsets,
                const at::Tensor& ids, int64_t width, int64_t height, int64_t tile_size,
                double max_alpha, int64_t num_threads, const at::Tensor& out_color,
                const at::Tensor& out_T, const at::Tensor& out_last, const at::Tensor& out_ext) {
    Scene S = make_scene(means2d, conics, opac, colors, bg, offsets, ids, width, height, tile_size,
                         max_alpha);
    const int64_t N = means2d.size(0);
    const int n_tiles = int(offsets.size(0) - 1);
    const int nt = int(std::max<int64_t>(1, num_threads));
    float* c = out_color.data_ptr<float>();
    float* T = out_T.data_ptr<float>();
    int32_t* l = out_last.data_ptr<int32_t>();
    float* e = out_ext.data_ptr<float>();
    switch (tile_size) {
        case 8: forward_impl<8>(S, N, n_tiles, nt, c, T, l, e); break;
        case 16: forward_impl<16>(S, N, n_tiles, nt, c, T, l, e); break;
        case 32: forward_impl<32>(S, N, n_tiles, nt, c, T, l, e); break;
        default: TORCH_CHECK(false, "cos3d_raster: tile_size must be 8, 16 or 32, got ", tile_size);
    }
}

void backward_op(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac,
                 const at::Tensor& colors, const at::Tensor& bg, const at::Tensor& offsets,
                 const at::Tensor& ids, const at::Tensor& ext, const at::Tensor& T_final,
                 const at::Tensor& last, const at::Tensor& v_color, const at::Tensor& v_alpha,
                 int64_t width, int64_t height,
                 int64_t tile_size, double max_alpha, int64_t num_threads, const at::Tensor& v_means2d,
                 const at::Tensor& v_conics, const at::Tensor& v_opac, const at::Tensor& v_colors) {
    Scene S = make_scene(means2d, conics, opac, colors, bg, offsets, ids, width, height, tile_size,
                         max_alpha);
    const int64_t N = means2d.size(0);
    TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "cos3d_raster: too many Gaussians (", N, ")");
    const int n_tiles = int(offsets.size(0) - 1);
    const int nt = int(std::max<int64_t>(1, num_threads));
    const float* Tf = T_final.data_ptr<float>();
    const int32_t* l = last.data_ptr<int32_t>();
    const float* vc = v_color.data_ptr<float>();
    const float* va = v_alpha.data_ptr<float>();
    float *gm = v_means2d.data_ptr<float>(), *gc = v_conics.data_ptr<float>();
    float *go = v_opac.data_ptr<float>(), *gcol = v_colors.data_ptr<float>();
    const float* e = ext.data_ptr<float>();
    switch (tile_size) {
        case 8: backward_impl<8>(S, N, n_tiles, nt, Tf, l, vc, va, gm, gc, go, gcol, e); break;
        case 16: backward_impl<16>(S, N, n_tiles, nt, Tf, l, vc, va, gm, gc, go, gcol, e); break;
        case 32: backward_impl<32>(S, N, n_tiles, nt, Tf, l, vc, va, gm, gc, go, gcol, e); break;
        default: TORCH_CHECK(false, "cos3d_raster: tile_size must be 8, 16 or 32, got ", tile_size);
    }
}

}  // namespace

TORCH_LIBRARY(cos3d_raster, m) {
    m.def(
        "rasterize_fwd(Tensor means2d, Tensor conics, Tensor opacities, Tensor colors, Tensor bg, "
        "Tensor tile_offsets, Tensor flatten_ids, int width, int height, int tile_size, "
        "float max_alpha, int num_threads, Tensor(a!) out_color, Tensor(b!) out_T, "
        "Tensor(c!) out_last, Tensor(d!) out_ext) -> ()",
        &forward_op);
    m.def(
        "rasterize_bwd(Tensor means2d, Tensor conics, Tensor opacities, Tensor colors, Tensor bg, "
        "Tensor tile_offsets, Tensor flatten_ids, Tensor ext, Tensor T_final, Tensor last, "
        "Tensor v_color, "
        "Tensor v_alpha, int width, int height, int tile_size, float max_alpha, int num_threads, "
        "Tensor(a!) v_means2d, Tensor(b!) v_conics, Tensor(c!) v_opacities, "
        "Tensor(d!) v_colors) -> ()",
        &backward_op);
}
