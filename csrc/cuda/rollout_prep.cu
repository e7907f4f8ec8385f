// CUDA implementation of the rollout's precomputed inputs (domino/rollout_prep.h).
//
// GRU input table: a shared-memory tiled GEMM, 16 x 16 outputs per block, each output summing
// h = 0..H-1 in order with unfused fp32 operations, rounded once to the weight dtype.
// Shortlist: best[b, v] and its sort key per element, then a segmented radix sort (CUB) of the
// keys in descending order with the ids as values, and the first K ids of each request copied out.
// Equal keys keep their ascending ids: DeviceSegmentedRadixSort shares DeviceRadixSort's
// implementation, which CUB documents as stable.
#include <cuda_runtime.h>

#include <climits>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "domino/numerics.h"
#include "domino/rollout_prep.h"

namespace domino {
namespace rollout {
namespace {

constexpr int kTile = 16;

template <typename T>
__global__ void gru_table_kernel(const T* __restrict__ emb, const T* __restrict__ w, int64_t V,
                                 int64_t H, int64_t G3, T* __restrict__ table) {
  __shared__ float e_tile[kTile][kTile + 1];
  __shared__ float w_tile[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t v0 = int64_t(blockIdx.x) * kTile, r0 = int64_t(blockIdx.y) * kTile;
  float acc = 0.0f;
  for (int64_t h0 = 0; h0 < H; h0 += kTile) {
    const int64_t h = h0 + tx;
    e_tile[ty][tx] = (v0 + ty < V && h < H) ? to_float(emb[(v0 + ty) * H + h]) : 0.0f;
    w_tile[ty][tx] = (r0 + ty < G3 && h < H) ? to_float(w[(r0 + ty) * H + h]) : 0.0f;
    __syncthreads();
    const int n = int(H - h0 < kTile ? H - h0 : kTile);
    for (int k = 0; k < n; ++k) acc = det::add(acc, det::mul(e_tile[ty][k], w_tile[tx][k]));
    __syncthreads();
  }
  if (v0 + ty < V && r0 + tx < G3) table[(v0 + ty) * G3 + r0 + tx] = from_float<T>(acc);
}

// Sort key of best[b, v] for a descending sort: NaN above everything, -0 folded into +0.
DOMINO_DEVICE uint32_t shortlist_key(float m) {
  if (det::is_nan(m)) return 0xffffffffu;
  return det::ordered_key(m == 0.0f ? 0.0f : m);
}

template <typename T>
__global__ void shortlist_keys_kernel(ShortlistParams p, uint32_t* keys, int32_t* ids,
                                      int32_t* offsets) {
  const int64_t total = p.B * p.V;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / p.V, v = i % p.V;
    const T* row0 = static_cast<const T*>(p.base) + b * p.base_stride_b;
    float m = to_float(row0[p.first * p.base_stride_n + v]);
    for (int32_t k = p.first + 1; k < p.end && !det::is_nan(m); ++k) {
      const float x = to_float(row0[k * p.base_stride_n + v]);
      if (det::is_nan(x) || x > m) m = x;
    }
    keys[i] = shortlist_key(m);
    ids[i] = int32_t(v);
    if (v == 0) offsets[b] = int32_t(i);
    if (i == total - 1) offsets[p.B] = int32_t(total);
  }
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// Workspace layout: keys in / out, ids in / out, B + 1 segment offsets, CUB's temporary storage.
struct ShortlistWorkspace {
  uint32_t *keys_in, *keys_out;
  int32_t *ids_in, *ids_out, *offsets;
  void* temp;
  size_t temp_bytes;
};

size_t cub_temp_bytes(int64_t B, int64_t V) {
  size_t bytes = 0;
  cub::DeviceSegmentedRadixSort::SortPairsDescending(
      nullptr, bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), int(B * V), int(B),
      static_cast<const int32_t*>(nullptr), static_cast<const int32_t*>(nullptr));
  return bytes;
}

ShortlistWorkspace carve(void* ws, int64_t B, int64_t V) {
  char* c = static_cast<char*>(ws);
  const size_t n = size_t(B * V) * 4;
  ShortlistWorkspace w;
  w.keys_in = reinterpret_cast<uint32_t*>(c);
  c += align256(n);
  w.keys_out = reinterpret_cast<uint32_t*>(c);
  c += align256(n);
  w.ids_in = reinterpret_cast<int32_t*>(c);
  c += align256(n);
  w.ids_out = reinterpret_cast<int32_t*>(c);
  c += align256(n);
  w.offsets = reinterpret_cast<int32_t*>(c);
  c += align256(size_t(B + 1) * 4);
  w.temp = c;
  w.temp_bytes = cub_temp_bytes(B, V);
  return w;
}

}  // namespace

int build_gru_table_cuda(const GruTableParams& p, void* stream) {
  if (p.V <= 0 || p.G3 <= 0) return int(cudaSuccess);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const dim3 grid(unsigned((p.V + kTile - 1) / kTile), unsigned((p.G3 + kTile - 1) / kTile));
  const dim3 block(kTile, kTile);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    gru_table_kernel<T><<<grid, block, 0, s>>>(static_cast<const T*>(p.embedding),
                                                static_cast<const T*>(p.w_ih), p.V, p.H, p.G3,
                                                static_cast<T*>(p.table));
  });
  return int(cudaGetLastError());
}

size_t shortlist_cuda_workspace_bytes(int64_t B, int64_t V) {
  const size_t n = align256(size_t(B * V) * 4);
  return 4 * n + align256(size_t(B + 1) * 4) + cub_temp_bytes(B, V);
}

int shortlist_cuda(const ShortlistParams& p, void* workspace, size_t workspace_bytes, void* stream) {
  if (p.B * p.V > int64_t(INT_MAX) || workspace_bytes < shortlist_cuda_workspace_bytes(p.B, p.V))
    return int(cudaErrorInvalidValue);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  ShortlistWorkspace w = carve(workspace, p.B, p.V);
  const int64_t total = p.B * p.V;
  const int threads = 256;
  const unsigned blocks = unsigned(total / threads + 1 < 65535 ? total / threads + 1 : 65535);
  dispatch_dtype(p.base_dtype, [&](auto tag) {
    using T = decltype(tag);
    shortlist_keys_kernel<T><<<blocks, threads, 0, s>>>(p, w.keys_in, w.ids_in, w.offsets);
  });
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return int(err);
  err = cub::DeviceSegmentedRadixSort::SortPairsDescending(
      w.temp, w.temp_bytes, w.keys_in, w.keys_out, w.ids_in, w.ids_out, int(total), int(p.B),
      w.offsets, w.offsets + 1, 0, 32, s);
  if (err != cudaSuccess) return int(err);
  return int(cudaMemcpy2DAsync(p.out, size_t(p.K) * 4, w.ids_out, size_t(p.V) * 4,
                               size_t(p.K) * 4, size_t(p.B), cudaMemcpyDeviceToDevice, s));
}

}  // namespace rollout
}  // namespace domino
