// CPU tile rasterizer for 2D Gaussians (3DGS alpha compositing), forward and hand-written backward.
//
// Registered as torch custom ops `cos3d_raster::rasterize_fwd` / `::rasterize_bwd` (loaded by
// gaussian_renderer/cpp_backend.py, which allocates every output and validates shapes/dtypes;
// this file trusts its inputs). All float tensors are float32, contiguous, on the CPU.
//
// Maths: the 3DGS compositing of gsplat 1.5.3 (RasterizeToPixels3DGSFwd.cu / Bwd.cu), re-written for
// a CPU: one tile at a time per OpenMP thread, its list walked in batches of Gaussians (see Batches),
// each Gaussian composited over the tile rows its ellipse reaches, vectorised over a row's pixels.
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
    const float* ext;        // [N,kExt] packed per-Gaussian parameters (compute_extents)
    int W, H, D, tiles_x;
    float max_alpha;
};

// Conservative bounds of {p : opacity * exp(-sigma(p)) >= 1/255}, i.e. sigma <= s = log(255 opacity),
// an ellipse 0.5 d^T Q d <= s (Q = [[a,b],[b,c]]): half extents |dx| <= sqrt(2 s Q^-1_xx), |dy| <=
// sqrt(2 s Q^-1_yy). 2s = -1 if it can never reach 1/255, +inf if Q is not positive definite (then only
// the exact per-pixel test decides). s gets 0.1 % + 1e-3 of slack (and the chords of prepare_batch
// one pixel), so rounding never drops a pixel that the exact per-pixel test (which always decides)
// would keep: these bounds only skip work. Stored per Gaussian with its parameters, packed in one
// 32-byte record {2s, mx, my, a, b, c, opacity, 0} so a tile's random ids cost one cache line each.
constexpr int kExt = 8;
static void compute_extents(const Scene& S, int64_t N, float* ext, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t g = 0; g < N; ++g) {
        const double o = S.opac[g];
        const double a = S.conics[3 * g], b = S.conics[3 * g + 1], c = S.conics[3 * g + 2];
        const double det = a * c - b * b;
        const double inf = std::numeric_limits<double>::infinity();
        double s2 = inf;
        if (!(o * 1.001 >= kAlphaMin)) {  // also catches NaN opacity
            s2 = -1.0;
        } else if (a > 0 && det > 0 && std::isfinite(det)) {
            s2 = 2.0 * (std::max(std::log(255.0 * o), 0.0) * 1.001 + 1e-3);
        }
        float* e = ext + kExt * g;
        e[0] = static_cast<float>(s2);
        e[1] = S.means2d[2 * g], e[2] = S.means2d[2 * g + 1];
        e[3] = S.conics[3 * g], e[4] = S.conics[3 * g + 1], e[5] = S.conics[3 * g + 2];
        e[6] = S.opac[g];
        e[7] = 0.f;
    }
}

// ---------------------------------------------------------------------------------------------
// Batches. A tile's list is walked kBatch Gaussians at a time. prepare_batch first gathers their
// parameters into arrays (independent loads: the cache misses of the random ids overlap instead of
// stalling each Gaussian's compositing), then finds, for all of them at once (a loop over the
// Gaussians that vectorises), the tile rows each one's alpha >= 1/255 ellipse can reach. The
// compositing then runs over those rows only, two fixed-width rows (2 TS pixels: two AVX-512
// vectors for TS = 16) at a time, or two half rows when every chord stays in one half of the
// columns, with no per-pixel branches.
constexpr int kBatch = 64;

struct Batch {
    alignas(64) float mx[kBatch], my[kBatch], a[kBatch], b[kBatch], c[kBatch], o[kBatch];
    alignas(64) float as2[kBatch], det[kBatch], inv_a[kBatch];  // the chord's constants (below)
    alignas(64) int32_t kind[kBatch];   // 0: can never reach 1/255, 1: ellipse, 2: not positive definite
    alignas(64) int32_t local[kBatch];  // index in the tile's list
    alignas(64) int32_t r_lo[kBatch], r_hi[kBatch];  // rows reached; empty when r_lo > r_hi
    alignas(64) int32_t h[kBatch];  // columns reached: h < 0 all, else only [h, h + TS/2)
    int64_t g[kBatch];
};

// Gaussians local0, local0 + step, ... (n of them) of the tile's list starting at `start`.
// A row is reached when the ellipse's chord at that row, a dx^2 + 2 b dy dx + c dy^2 <= 2 s, i.e.
// pixel-centre x in mx + (b dy +- sqrt(a 2s - det dy^2)) / a (dy = my - row centre), overlaps the
// tile's pixel centres with one pixel of margin. Float rounding here is far below the slack in s (see
// compute_extents), so no reachable pixel is dropped; the exact per-pixel test always decides. The
// reached rows of a convex ellipse are contiguous. row_last (backward only) further drops the rows
// whose pixels all stopped before this Gaussian.
template <int TS>
static COS3D_INLINE void prepare_batch(const Scene& S, Batch& B, int64_t start, int32_t local0,
                                       int32_t step, int n, float px0, float py0, int rows, int cols,
                                       const int32_t* row_last) {
    alignas(64) float x_lo[kBatch], x_hi[kBatch];  // the reached rows' chords span [x_lo, x_hi]
    for (int j = 0; j < n; ++j) {
        const int32_t local = local0 + step * j;
        const int64_t g = S.ids[start + local];
        const float* e = S.ext + kExt * g;
        const float s2 = e[0], a = e[3], b = e[4], c = e[5];
        B.g[j] = g;
        B.local[j] = local;
        B.mx[j] = e[1];
        B.my[j] = e[2];
        B.a[j] = a, B.b[j] = b, B.c[j] = c;
        B.o[j] = e[6];
        B.kind[j] = s2 < 0.f ? 0 : (s2 < 1e30f ? 1 : 2);
        B.as2[j] = a * s2;
        B.det[j] = a * c - b * b;
        B.inv_a[j] = 1.f / a;
        B.r_lo[j] = TS;
        B.r_hi[j] = -1;
        x_lo[j] = std::numeric_limits<float>::infinity();
        x_hi[j] = -std::numeric_limits<float>::infinity();
    }
    const float left = px0 - 1.f, right = px0 + float(cols);
    for (int r = 0; r < rows; ++r) {
        const float py = py0 + float(r);
        const int32_t rl = row_last ? row_last[r] : std::numeric_limits<int32_t>::max();
        for (int j = 0; j < n; ++j) {  // vectorised over the batch
            const float dy = B.my[j] - py;
            const float q = B.as2[j] - B.det[j] * dy * dy;
            const float half = std::sqrt(std::max(q, 0.f)) * B.inv_a[j];
            const float mid = B.mx[j] + B.b[j] * dy * B.inv_a[j];
            const bool chord = (B.kind[j] == 1) & (q >= 0.f) & (mid + half >= left) & (mid - half <= right);
            // not positive definite: every row, unless the mean is NaN (then no pixel passes anyway)
            const bool any_row = (B.kind[j] == 2) & (B.mx[j] == B.mx[j]) & (B.my[j] == B.my[j]);
            const bool hit = (chord | any_row) & (B.local[j] <= rl);
            B.r_lo[j] = (hit & (B.r_lo[j] > r)) ? r : B.r_lo[j];
            B.r_hi[j] = hit ? r : B.r_hi[j];
            x_lo[j] = hit ? std::min(x_lo[j], any_row ? -1e30f : mid - half) : x_lo[j];
            x_hi[j] = hit ? std::max(x_hi[j], any_row ? 1e30f : mid + half) : x_hi[j];
        }
    }
    // one half of the columns is enough when no pixel centre of the other half lies within a pixel
    // of the chords (the same margin as the rows')
    const float mid_x = px0 + float(TS / 2);  // centre of column TS/2
    for (int j = 0; j < n; ++j)
        B.h[j] = x_hi[j] + 1.f < mid_x ? 0 : (x_lo[j] - 1.f > mid_x - 1.f ? TS / 2 : -1);
}

// sigma of one pixel (d = mean - pixel centre). The forward and the backward call this same function
// on the same per-lane values (however they group the rows), so they agree on which pixels a Gaussian
// was composited on. (Bit for bit up to the compiler's FMA contraction, which may differ between the
// two inlined copies: then a pixel within one rounding of the 1/255 threshold could be judged
// differently, an alpha <= 1/255 error in one pixel's gradient, as between gsplat's separately
// compiled kernels. -ffp-contract=off would rule it out at 15-20 % of the speed.)
// sigma = 0.5 (a dx^2 + c dy^2) + b dx dy = dx (a/2 dx + b dy) + c/2 dy^2.
static COS3D_INLINE float pixel_sigma(float dx, float dy, float ha, float b, float hc) {
    return dx * (ha * dx + b * dy) + hc * dy * dy;
}

// Composite one Gaussian over W pixels of R consecutive tile rows (W = TS or TS/2; T, last, done and
// acc point at the first row's first such pixel, rows TS apart, acc has D planes NP apart; pxs: the
// pixels' centre x, pyr: the first row's centre y). The R rows are independent exp chains the CPU
// overlaps. Takes the pixels that stopped in each row off its count in row_active[0..R); returns
// their sum.
template <int TS, int R, int W>
static COS3D_INLINE int fwd_rows(float* __restrict T, int32_t* __restrict last, int32_t* __restrict done,
                                  float* __restrict acc, int NP, int D, const float* __restrict col,
                                  const float* __restrict pxs, float mx, float my, float pyr, float ha,
                                  float b, float hc, float o, float max_alpha, int32_t local,
                                  int* __restrict row_active) {
    alignas(64) float w[R][W];
    int total = 0;
    for (int rr = 0; rr < R; ++rr) {
        const float dy = my - (pyr + float(rr));
        float* Tr = T + rr * TS;
        int32_t* lr = last + rr * TS;
        int32_t* dr = done + rr * TS;
        int stopped = 0;
        #pragma omp simd reduction(+ : stopped)
        for (int i = 0; i < W; ++i) {
            const float sigma = pixel_sigma(mx - pxs[i], dy, ha, b, hc);
            const float alpha = std::min(max_alpha, o * exp_neg(-sigma));
            const bool ok = (sigma >= 0.f) & (alpha >= kAlphaMin) & (dr[i] == 0);
            const float nt = Tr[i] * (1.f - alpha);
            const bool stop = ok & (nt <= kTMin);
            const bool use = ok & !(nt <= kTMin);
            w[rr][i] = use ? alpha * Tr[i] : 0.f;
            Tr[i] = use ? nt : Tr[i];
            lr[i] = use ? local : lr[i];
            dr[i] = stop ? 1 : dr[i];
            stopped += stop;
        }
        row_active[rr] -= stopped;
        total += stopped;
    }
    for (int k = 0; k < D; ++k) {
        const float ck = col[k];
        for (int rr = 0; rr < R; ++rr) {
            float* ak = acc + size_t(k) * NP + rr * TS;
            #pragma omp simd
            for (int i = 0; i < W; ++i) ak[i] += w[rr][i] * ck;
        }
    }
    return total;
}

// Gaussian j of the batch over its rows, two at a time while it can, W pixels of each (the arrays
// and pxs start at the first of them). Returns the pixels that stopped.
template <int TS, int W>
static COS3D_INLINE int fwd_gaussian(const Batch& B, int j, float* T, int32_t* last, int32_t* done, float* acc,
                                     int NP, int D, const float* col, const float* pxs, float py0,
                                     float max_alpha, int* row_active) {
    const float mx = B.mx[j], my = B.my[j], ha = 0.5f * B.a[j], b = B.b[j], hc = 0.5f * B.c[j], o = B.o[j];
    const int32_t local = B.local[j];
    int stopped = 0;
    for (int r = B.r_lo[j]; r <= B.r_hi[j]; ++r) {
        const int p = r * TS;
        const float pyr = py0 + float(r);
        if (r < B.r_hi[j] && (row_active[r] | row_active[r + 1])) {
            stopped += fwd_rows<TS, 2, W>(T + p, last + p, done + p, acc + p, NP, D, col, pxs, mx, my, pyr,
                                          ha, b, hc, o, max_alpha, local, row_active + r);
            ++r;
        } else if (row_active[r]) {
            stopped += fwd_rows<TS, 1, W>(T + p, last + p, done + p, acc + p, NP, D, col, pxs, mx, my, pyr,
                                          ha, b, hc, o, max_alpha, local, row_active + r);
        }
    }
    return stopped;
}

// ---------------------------------------------------------------------------------------------
// forward: one tile. scratch: D*TS*TS floats. TS is a power of two.
template <int TS>
COS3D_CLONES void forward_tile(const Scene& S, int tile, float* scratch, float* out_color,
                               float* out_T, int32_t* out_last) {
    static_assert((TS & (TS - 1)) == 0, "tile size must be a power of two");
    constexpr int NP = TS * TS;
    alignas(64) float T[NP];
    alignas(64) int32_t last[NP];
    alignas(64) int32_t done[NP];
    alignas(64) float pxs[TS];  // pixel-centre x of the tile's columns (exact in float)
    int row_active[TS];         // pixels of each row still compositing
    const int D = S.D;
    float* acc = scratch;  // [D][NP]
    const int x0 = (tile % S.tiles_x) * TS, y0 = (tile / S.tiles_x) * TS;
    const int rows = std::min(TS, S.H - y0), cols = std::min(TS, S.W - x0);
    const float px0 = float(x0) + 0.5f, py0 = float(y0) + 0.5f;
    for (int i = 0; i < TS; ++i) pxs[i] = px0 + float(i);
    for (int p = 0; p < NP; ++p) {
        const bool in = (p / TS) < rows && (p % TS) < cols;
        T[p] = 1.f;
        last[p] = -1;
        done[p] = in ? 0 : 1;
    }
    for (int r = 0; r < TS; ++r) row_active[r] = r < rows ? cols : 0;
    int active = rows * cols;
    std::fill(acc, acc + size_t(D) * NP, 0.f);

    const int64_t start = S.offsets[tile], count = S.offsets[tile + 1] - start;
    const float max_alpha = S.max_alpha;
    Batch B;
    for (int64_t i0 = 0; i0 < count && active > 0; i0 += kBatch) {
        const int n = int(std::min<int64_t>(kBatch, count - i0));
        prepare_batch<TS>(S, B, start, int32_t(i0), 1, n, px0, py0, rows, cols, nullptr);
        for (int j = 0; j < n && active > 0; ++j) {
            if (B.r_lo[j] > B.r_hi[j]) continue;
            const float* col = S.colors + B.g[j] * D;
            const int h = B.h[j];
            if (h < 0) active -= fwd_gaussian<TS, TS>(B, j, T, last, done, acc, NP, D, col, pxs, py0,
                                                      max_alpha, row_active);
            else active -= fwd_gaussian<TS, TS / 2>(B, j, T + h, last + h, done + h, acc + h, NP, D, col,
                                                    pxs + h, py0, max_alpha, row_active);
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
// backward. With out = sum_i c_i alpha_i T_i + T_f bg, T_i = prod_{j<i} (1 - alpha_j), alpha_out = 1 - T_f:
//   d out / d alpha_i = c_i T_i - (sum_{j>i} c_j alpha_j T_j + T_f bg) / (1 - alpha_i)
//   d alpha_out / d alpha_i = T_f / (1 - alpha_i)
// The sum over j > i is the "composited behind" buffer, built while walking back to front.

// One Gaussian over W pixels of R consecutive tile rows (as in fwd_rows), walking back to front:
// recovers the transmittance in front of it (T /= 1 - alpha) on the pixels it was composited on
// (valid: local <= last contributor and the forward's skip tests pass), adds its colour gradient to
// gcol and its geometry gradient to gsum (per lane, in planes of 2 TS lanes, [D] and [kGradStride],
// row rr's pixel i in lane rr TS + i; summed over the lanes once per Gaussian), and its colour to
// the "composited behind" buffer. No gradient through the max_alpha clamp (as gsplat: only where
// opacity * exp(-sigma) <= max_alpha). vc, buf: D planes NP apart. Returns the valid pixels.
template <int TS, int R, int W>
static COS3D_INLINE int bwd_rows(float* __restrict T, const int32_t* __restrict last,
                                 const float* __restrict base, const float* __restrict vc,
                                 float* __restrict buf, int NP, int D, const float* __restrict col,
                                 const float* __restrict pxs, float mx, float my, float pyr, float a,
                                 float b, float c, float o, float max_alpha, int32_t local,
                                 float* __restrict gcol, float* __restrict gsum) {
    constexpr int G = 2 * TS;  // lanes of a gradient plane
    alignas(64) float dxs[R][W], es[R][W], oes[R][W], fac[R][W], ras[R][W], tns[R][W], va[R][W];
    const float ha = 0.5f * a, hc = 0.5f * c;
    int any = 0;
    for (int rr = 0; rr < R; ++rr) {
        const float dy = my - (pyr + float(rr));
        float* Tr = T + rr * TS;
        const int32_t* lr = last + rr * TS;
        const float* br = base + rr * TS;
        #pragma omp simd reduction(+ : any)
        for (int i = 0; i < W; ++i) {
            const float dx = mx - pxs[i];
            const float sigma = pixel_sigma(dx, dy, ha, b, hc);
            const float e = exp_neg(-sigma);
            const float oe = o * e;
            const float alpha = std::min(max_alpha, oe);
            const bool valid = (local <= lr[i]) & (sigma >= 0.f) & (alpha >= kAlphaMin);
            const float ra = 1.f / (1.f - alpha);
            const float tn = Tr[i] * ra;  // transmittance in front of this Gaussian
            dxs[rr][i] = dx;
            es[rr][i] = valid ? e : 0.f;
            oes[rr][i] = valid ? oe : 2.f;  // 2 > max_alpha: treated as clamped (no geometry gradient)
            fac[rr][i] = valid ? alpha * tn : 0.f;
            ras[rr][i] = valid ? ra : 0.f;
            tns[rr][i] = valid ? tn : 0.f;
            va[rr][i] = valid ? br[i] * ra : 0.f;  // d loss / d alpha: alpha-out and bg terms
            Tr[i] = valid ? tn : Tr[i];
            any += valid;
        }
    }
    for (int k = 0; k < D; ++k) {  // colour k: its gradient, its d alpha term, the buffer
        const float ck = col[k];
        for (int rr = 0; rr < R; ++rr) {
            const float* vk = vc + size_t(k) * NP + rr * TS;
            float* bk = buf + size_t(k) * NP + rr * TS;
            float* gk = gcol + size_t(k) * G + rr * TS;
            #pragma omp simd
            for (int i = 0; i < W; ++i) {
                gk[i] += fac[rr][i] * vk[i];
                va[rr][i] += (ck * tns[rr][i] - bk[i] * ras[rr][i]) * vk[i];
                bk[i] += ck * fac[rr][i];
            }
        }
    }
    for (int rr = 0; rr < R; ++rr) {
        const float dy = my - (pyr + float(rr));
        float* gs = gsum + rr * TS;
        #pragma omp simd
        for (int i = 0; i < W; ++i) {
            const bool unclamped = oes[rr][i] <= max_alpha;
            const float vs = unclamped ? -oes[rr][i] * va[rr][i] : 0.f;  // d loss / d sigma
            const float dx = dxs[rr][i];
            gs[0 * G + i] += vs * (a * dx + b * dy);
            gs[1 * G + i] += vs * (b * dx + c * dy);
            gs[2 * G + i] += 0.5f * vs * dx * dx;
            gs[3 * G + i] += vs * dx * dy;
            gs[4 * G + i] += 0.5f * vs * dy * dy;
            gs[5 * G + i] += unclamped ? es[rr][i] * va[rr][i] : 0.f;
        }
    }
    return any;
}

// Gaussian j of the batch over its rows, two at a time while it can, skipping the rows whose pixels
// all stopped before it; W pixels of each (the arrays and pxs start at the first of them; gcol and
// gsum at their lane). Returns the valid pixels.
template <int TS, int W>
static COS3D_INLINE int bwd_gaussian(const Batch& B, int j, float* T, const int32_t* last, const float* base,
                                     const float* vc, float* buf, int NP, int D, const float* col,
                                     const float* pxs, float py0, float max_alpha, const int32_t* row_last,
                                     float* gcol, float* gsum) {
    const float mx = B.mx[j], my = B.my[j], a = B.a[j], b = B.b[j], c = B.c[j], o = B.o[j];
    const int32_t local = B.local[j];
    int any = 0;
    for (int r = B.r_lo[j]; r <= B.r_hi[j]; ++r) {
        const int p = r * TS;
        const float pyr = py0 + float(r);
        if (r < B.r_hi[j] && std::max(row_last[r], row_last[r + 1]) >= local) {
            any += bwd_rows<TS, 2, W>(T + p, last + p, base + p, vc + p, buf + p, NP, D, col, pxs, mx, my, pyr,
                                      a, b, c, o, max_alpha, local, gcol, gsum);
            ++r;
        } else if (row_last[r] >= local) {
            any += bwd_rows<TS, 1, W>(T + p, last + p, base + p, vc + p, buf + p, NP, D, col, pxs, mx, my, pyr,
                                      a, b, c, o, max_alpha, local, gcol, gsum);
        }
    }
    return any;
}

// Sums each of the m rows of TS lanes in place (the sum lands in lane 0) by halving: lanes i and i + W
// added, W = TS/2, ..., 1. A fixed order (so the same bits on any thread), vectorised over the lanes.
template <int W, int TS>
static COS3D_INLINE void sum_lanes(float* __restrict L, int m) {
    for (int k = 0; k < m; ++k) {
        float* l = L + k * TS;
        #pragma omp simd
        for (int i = 0; i < W; ++i) l[i] += l[i + W];
    }
    if constexpr (W > 1) sum_lanes<W / 2, TS>(L, m);
}

// backward: one tile. scratch: 2*D*TS*TS + (6 + D)*2*TS floats. The tile owns slots [offsets[tile],
// offsets[tile+1]) (less slot0): its k-th Gaussian with a gradient gets slot s = offsets[tile] -
// slot0 + k, with slots[s] = [6 + D] (d mean x, y, d conic a, b, c, d opacity, d colors) and
// slot_g[s] = its id. Returns k, the number of slots written.
template <int TS>
COS3D_CLONES int64_t backward_tile(const Scene& S, int tile, const float* T_final, const int32_t* last_in,
                                   const float* v_color, const float* v_alpha, float* scratch,
                                   float* slots, int32_t* slot_g, int64_t slot0) {
    constexpr int NP = TS * TS;
    alignas(64) float T[NP];
    alignas(64) int32_t last[NP];
    alignas(64) float base[NP];  // T_final (v_alpha_out - bg . v_color): alpha-out and bg terms
    alignas(64) float pxs[TS];  // as in forward_tile
    const int D = S.D;
    float* vc = scratch;               // [D][NP] d loss / d colour of each pixel
    float* buf = vc + size_t(D) * NP;  // [D][NP] colour composited behind the current Gaussian
    float* gsum = buf + size_t(D) * NP;  // [kGradStride][2 TS] per-lane gradient of the current Gaussian,
    float* gcol = gsum + kGradStride * 2 * TS;  // then [D][2 TS] per-lane colour gradient: the slot's layout
    const int x0 = (tile % S.tiles_x) * TS, y0 = (tile / S.tiles_x) * TS;
    const int rows = std::min(TS, S.H - y0), cols = std::min(TS, S.W - x0);
    const float px0 = float(x0) + 0.5f, py0 = float(y0) + 0.5f;
    for (int i = 0; i < TS; ++i) pxs[i] = px0 + float(i);
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
    Batch B;
    for (int32_t hi = max_last; hi >= 0; hi -= kBatch) {  // back to front
        const int n = int(std::min<int32_t>(kBatch, hi + 1));
        prepare_batch<TS>(S, B, start, hi, -1, n, px0, py0, rows, cols, row_last);
        for (int j = 0; j < n; ++j) {
            if (B.r_lo[j] > B.r_hi[j]) continue;
            const float* col = S.colors + B.g[j] * D;
            std::fill(gsum, gsum + (kGradStride + D) * 2 * TS, 0.f);
            const int h = B.h[j];
            const int any = h < 0
                ? bwd_gaussian<TS, TS>(B, j, T, last, base, vc, buf, NP, D, col, pxs, py0, max_alpha, row_last,
                                       gcol, gsum)
                : bwd_gaussian<TS, TS / 2>(B, j, T + h, last + h, base + h, vc + h, buf + h, NP, D, col, pxs + h,
                                           py0, max_alpha, row_last, gcol + h, gsum + h);
            if (!any) continue;
            const int64_t slot = start - slot0 + n_used++;
            slot_g[slot] = int32_t(B.g[j]);
            float* gg = slots + slot * (kGradStride + D);
            sum_lanes<TS, 2 * TS>(gsum, kGradStride + D);
            for (int m = 0; m < kGradStride + D; ++m) gg[m] = gsum[m * 2 * TS];
        }
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
            std::vector<float> scratch(size_t(2 * D) * TS * TS + size_t(kGradStride + D) * 2 * TS);
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
