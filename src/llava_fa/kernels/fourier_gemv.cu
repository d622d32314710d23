// Batch-1 GEMV of an `rfft` fourier layer (LLaVA-FA) from its PolarQuant codes, in CUDA C++.
//
// z_j = sum_k Re(S[j,k] conj(X_k)) = sum_k pc(code) scale Re X_k + ps(code) scale Im X_k, with
// (pc, ps) = (2 level cos theta, 2 level sin theta) of the entry's code (kernels/fourier_matmul.py has
// the derivation). The Triton gemv gathered (pc, ps) from a 2^b-entry table in global memory: ncu
// found it bound by L1 (82% busy), each warp's gather touching several sectors. Here the table sits
// in shared memory with one copy per lane (entry c of lane l at word 32 c + l, so in bank l): every
// lookup is one conflict-free shared load.
//
// Layout read (formats/fourier_runtime.KernelLayout, unchanged): codes uint8 (K_pad * bits / 8, m),
// byte t of packed word w of every row at codes row w * WORD_BYTES + t, output rows contiguous. A
// thread takes 4 adjacent rows and loads one uint32 (their 4 bytes) per codes row: a warp reads 128
// contiguous bytes per load, 128 rows. A block has WARPS warps, each on KW consecutive entries of
// the block's 128 rows; the warps' sums are added in shared memory, the K splits (grid y) in a
// (splits, m) buffer, in split order, by the last block of each row block to finish (a counter per
// row block, reset by that block): one launch, no atomics on the result, the same output every run.
// The last block adds the self-conjugate columns, divides by the ODC rows, adds the bias and casts.
// Built by nvcc into a cubin, loaded and launched through the driver API (kernels/cuda_build.py).
#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
template <bool WIDE> struct WordOf { typedef uint32_t type; };
template <> struct WordOf<true> { typedef uint64_t type; };

constexpr int ROWS_PER_THREAD = 4;
constexpr int ROWS_PER_BLOCK = 32 * ROWS_PER_THREAD;

__device__ __forceinline__ uint32_t load_stream(const uint32_t* at) {
  uint32_t v;  // read once: no L1 allocation
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(at));
  return v;
}

template <typename Word, int WORD_BYTES>
__device__ __forceinline__ Word row_word(const uint32_t (&bytes)[WORD_BYTES], int r) {
  if (WORD_BYTES == 1) return bytes[0] >> (8 * r);  // the codes sit in byte r; higher bytes are masked off later
  if (WORD_BYTES == 3) {  // byte r of each of the three, two byte permutes (byte 3 is left over, never read)
    const uint32_t low = __byte_perm(bytes[0], bytes[1], r | ((4 + r) << 4));
    return __byte_perm(low, bytes[WORD_BYTES - 1], 0x0010 | ((4 + r) << 8));
  }
  Word word = 0;  // 5 or 7 bytes: a 64-bit word
#pragma unroll
  for (int t = 0; t < WORD_BYTES; ++t) word |= static_cast<Word>((bytes[t] >> (8 * r)) & 0xFFu) << (8 * t);
  return word;
}

__device__ __forceinline__ float load_any(const void* p, int kind, int i) {  // 0 float32, 1 float16, 2 bfloat16
  if (kind == 1) return __half2float(static_cast<const __half*>(p)[i]);
  if (kind == 2) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void store_any(void* p, int kind, int i, float v) {
  if (kind == 1) static_cast<__half*>(p)[i] = __float2half_rn(v);
  else if (kind == 2) static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else static_cast<float*>(p)[i] = v;
}

struct GemvArgs {
  const float2* spec;        // (h,) the activation's orthonormal rfft
  const uint32_t* codes;     // the codes' bytes as uint32: (K_pad * bits / 8, m / 4)
  const uint32_t* tables;    // (2^bits,) (pc, ps) float16 pairs
  const __half* scales;      // (n_groups,)
  const int* group_start;    // (m,) group of each row's first entry
  const float* edges;        // (m, n_edge, 2) weighted self-conjugate columns
  const float* rows;         // (m,) ODC row divisors, or null
  const void* bias;          // (m,) or null, of kind bias_kind
  float* partials;           // (splits, m)
  unsigned int* counters;    // (row blocks,) zero between calls
  void* out;                 // (m,) of kind out_kind
  int m, k_reg, n_words, group, n_edge, edge0, edge1, bias_kind, out_kind;
};

// The block's activation entries, as float16 pairs in shared memory, times 2^(10 - e) where 2^e bounds
// their largest component: eight products summed in float16 stay below 2^15 (|pc|, |ps| <= 2), and the
// float32 sums are scaled back by the exact inverse. Returns that inverse.
template <int K_BLOCK, int WARPS>
__device__ __forceinline__ float stage_activation(const GemvArgs& a, int k_block, __half2* xs, float* warp_max) {
  constexpr int PER_THREAD = (K_BLOCK + 32 * WARPS - 1) / (32 * WARPS);  // fewer entries than threads: some idle
  float2 x[PER_THREAD];
  float largest = 0.f;
#pragma unroll
  for (int j = 0; j < PER_THREAD; ++j) {
    const int i = threadIdx.x + j * 32 * WARPS, k = k_block + i;  // entry k is spectrum column k + 1; padding is 0
    x[j] = i < K_BLOCK && k < a.k_reg ? __ldg(a.spec + k + 1) : make_float2(0.f, 0.f);
    largest = fmaxf(largest, fmaxf(fabsf(x[j].x), fabsf(x[j].y)));
  }
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) largest = fmaxf(largest, __shfl_xor_sync(0xFFFFFFFFu, largest, d));
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = largest;
  __syncthreads();
#pragma unroll
  for (int v = 0; v < WARPS; ++v) largest = fmaxf(largest, warp_max[v]);
  int e = 0;
  frexpf(largest, &e);  // largest < 2^e
  const float down = largest > 0.f ? ldexpf(1.f, 10 - e) : 1.f;
#pragma unroll
  for (int j = 0; j < PER_THREAD; ++j)
    if (threadIdx.x + j * 32 * WARPS < K_BLOCK) xs[threadIdx.x + j * 32 * WARPS] = __floats2half2_rn(x[j].x * down, x[j].y * down);
  return largest > 0.f ? ldexpf(1.f, e - 10) : 1.f;
}

template <int BITS, int ENTRIES, int WORD_BYTES, int KW, int WARPS>
__device__ __forceinline__ void polar_gemv(const GemvArgs& a) {
  typedef typename WordOf<(WORD_BYTES > 4)>::type Word;
  constexpr int NW = KW / ENTRIES;  // packed words per warp
  constexpr int K_BLOCK = KW * WARPS;  // entries per block
  constexpr uint32_t MASK = (1u << BITS) - 1;
  __shared__ __align__(16) uint32_t table[(1 << BITS) * 32];
  __shared__ __half2 xs[K_BLOCK];
  __shared__ float warp_max[WARPS];
  __shared__ float warp_sums[WARPS][ROWS_PER_BLOCK];
  __shared__ bool last_block;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * ROWS_PER_BLOCK + lane * ROWS_PER_THREAD;
  const int k_block = blockIdx.y * K_BLOCK, k_begin = k_block + warp * KW;
  const int mq = a.m / ROWS_PER_THREAD;
  // the codes of this warp's words, all loads issued before any use. Rows past m (the last row block) read
  // the last valid rows and words past the codes (the last split) the last word: their results are never
  // stored, or meet a zero activation, and the loads need no predicates.
  const int first_word = k_begin / ENTRIES, last_word = a.n_words - 1;
  const uint32_t* at = a.codes + static_cast<size_t>(min(first_word, last_word)) * WORD_BYTES * mq +
                       min(row0, a.m - ROWS_PER_THREAD) / ROWS_PER_THREAD;
  uint32_t bytes[NW][WORD_BYTES];
#pragma unroll
  for (int w = 0; w < NW; ++w) {
    const int step = min(first_word + w, last_word) - min(first_word, last_word);  // w, but for the last split
#pragma unroll
    for (int t = 0; t < WORD_BYTES; ++t) bytes[w][t] = load_stream(at + (step * WORD_BYTES + t) * mq);
  }
  // the warp's entries lie in one group of each row (the caller checks group % KW == 0): one scale per row
  const int group = k_begin / a.group;
  float scale[ROWS_PER_THREAD];
#pragma unroll
  for (int r = 0; r < ROWS_PER_THREAD; ++r)
    scale[r] = (row0 + r < a.m && k_begin < a.k_reg) ? __half2float(a.scales[__ldg(a.group_start + row0 + r) + group]) : 0.f;
  for (int i = threadIdx.x; i < (1 << BITS) * 8; i += 32 * WARPS) {  // 8 x 16 bytes: one code's 32 copies
    const uint32_t pair = __ldg(a.tables + (i >> 3));
    reinterpret_cast<uint4*>(table)[i] = make_uint4(pair, pair, pair, pair);
  }
  const float up = stage_activation<K_BLOCK, WARPS>(a, k_block, xs, warp_max);
  __syncthreads();  // the table and the activation are in place
  // Per entry: a shift and a masked OR give the byte offset of (code, lane) in the table, one shared
  // load, one float16 FMA of both products. Eight entries' sums go to float32 at a time.
  constexpr int FLUSH = ENTRIES >= 8 ? 1 : 8 / ENTRIES;  // words per float16 sum
  const char* tab = reinterpret_cast<const char*>(table);
  const uint32_t lane_bytes = static_cast<uint32_t>(lane) * 4;
  float acc[ROWS_PER_THREAD] = {};
  __half2 sum[ROWS_PER_THREAD];
#pragma unroll
  for (int w = 0; w < NW; ++w) {
    Word word[ROWS_PER_THREAD];
#pragma unroll
    for (int r = 0; r < ROWS_PER_THREAD; ++r) {
      word[r] = row_word<Word, WORD_BYTES>(bytes[w], r);
      if (w % FLUSH == 0) sum[r] = __float2half2_rn(0.f);
    }
#pragma unroll
    for (int p = 0; p < ENTRIES; ++p) {
      const __half2 x = xs[warp * KW + w * ENTRIES + p];  // the same address for the whole warp: a broadcast
#pragma unroll
      for (int r = 0; r < ROWS_PER_THREAD; ++r) {
        const Word moved = p * BITS >= 7 ? word[r] >> (p * BITS - 7) : word[r] << (7 - p * BITS);
        const uint32_t offset = (static_cast<uint32_t>(moved) & (MASK << 7)) | lane_bytes;  // 128 bytes per code
        sum[r] = __hfma2(*reinterpret_cast<const __half2*>(tab + offset), x, sum[r]);
      }
    }
    if (w % FLUSH == FLUSH - 1 || w == NW - 1) {
#pragma unroll
      for (int r = 0; r < ROWS_PER_THREAD; ++r) {
        const float2 f = __half22float2(sum[r]);
        acc[r] += f.x + f.y;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS_PER_THREAD; ++r) acc[r] *= up * scale[r];
#pragma unroll
  for (int r = 0; r < ROWS_PER_THREAD; ++r) warp_sums[warp][lane * ROWS_PER_THREAD + r] = acc[r];
  __syncthreads();
  const int t = threadIdx.x, row = blockIdx.x * ROWS_PER_BLOCK + t;
  if (t < ROWS_PER_BLOCK && row < a.m) {
    float sum = 0.f;
#pragma unroll
    for (int v = 0; v < WARPS; ++v) sum += warp_sums[v][t];
    a.partials[static_cast<size_t>(blockIdx.y) * a.m + row] = sum;
  }
  __threadfence();  // the partial sums are visible before the count says so
  __syncthreads();
  if (t == 0) last_block = atomicAdd(a.counters + blockIdx.x, 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  if (t < ROWS_PER_BLOCK && row < a.m) {
    float z = 0.f;  // the splits' sums in split order; eight loads in flight at a time, not one
    const int splits = static_cast<int>(gridDim.y);
    for (int s0 = 0; s0 < splits; s0 += 8) {
      float v[8];
#pragma unroll
      for (int i = 0; i < 8; ++i)
        v[i] = s0 + i < splits ? __ldcg(a.partials + static_cast<size_t>(s0 + i) * a.m + row) : 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) z += v[i];
    }
    for (int e = 0; e < a.n_edge; ++e) {  // DC / Nyquist: dense weighted values
      const float2 x = a.spec[e == 0 ? a.edge0 : a.edge1];
      z += a.edges[(row * a.n_edge + e) * 2] * x.x + a.edges[(row * a.n_edge + e) * 2 + 1] * x.y;
    }
    if (a.rows != nullptr) z /= a.rows[row];
    if (a.bias != nullptr) z += load_any(a.bias, a.bias_kind, row);
    store_any(a.out, a.out_kind, row, z);
  }
  if (t == 0) a.counters[blockIdx.x] = 0u;  // ready for the next call
}

// One entry point per code width, entries per warp and warps per block, with C names: kernels/cuda_build.py
// loads the cubin through the driver API (as Triton does) and launches them by name with the GemvArgs block.
// bits -> (codes per word, bytes per word) as formats/fourier_runtime.word_shape. Every width has 32 and 64
// entries per warp in blocks of 4 warps; 6-bit codes (PolarQuant 3+3, the default) also the other shapes
// that scripts/bench_fourier_kernel.py --cuda-sweep times.
#define POLAR_GEMV(BITS, ENTRIES, WORD_BYTES, KW, WARPS)                                                     \
  extern "C" __global__ void __launch_bounds__(32 * WARPS) polar_gemv_b##BITS##_kw##KW##_w##WARPS(const GemvArgs a) { \
    polar_gemv<BITS, ENTRIES, WORD_BYTES, KW, WARPS>(a);                                                        \
  }
#define POLAR_GEMV_BOTH(BITS, ENTRIES, WORD_BYTES) \
  POLAR_GEMV(BITS, ENTRIES, WORD_BYTES, 32, 4) POLAR_GEMV(BITS, ENTRIES, WORD_BYTES, 64, 4)
POLAR_GEMV_BOTH(2, 4, 1)
POLAR_GEMV_BOTH(3, 8, 3)
POLAR_GEMV_BOTH(4, 2, 1)
POLAR_GEMV_BOTH(5, 8, 5)
POLAR_GEMV_BOTH(6, 4, 3)
POLAR_GEMV_BOTH(7, 8, 7)
POLAR_GEMV_BOTH(8, 1, 1)
POLAR_GEMV(6, 4, 3, 16, 4)
POLAR_GEMV(6, 4, 3, 16, 8)
POLAR_GEMV(6, 4, 3, 32, 8)
POLAR_GEMV(6, 4, 3, 64, 8)
POLAR_GEMV(6, 4, 3, 128, 4)
