/* Instructions per second of one core for the multiply instructions tuna's kernels choose
 * between: f32 FMA (zmm, ymm) and the bf16 dot product vdpbf16ps (zmm, ymm). Sixteen
 * independent accumulators per loop, so each figure is a throughput, not a latency. Used to
 * decide which kernel a processor family gets (dpbf16::outpaces_f32; BENCHMARKS.md).
 * Built and run by scripts/instruction-rates.sh. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#define REP(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define N 50000000L

#define BENCH(NAME, VEC, INIT, OP, MACS, SUM)                                              \
  {                                                                                       \
    VEC z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15;              \
    REP(INIT)                                                                             \
    double t = now();                                                                     \
    for (long n = 0; n < N; n++) {                                                        \
      REP(OP)                                                                             \
      __asm__ volatile("" : "+v"(z0));                                                    \
    }                                                                                     \
    double dt = now() - t;                                                                \
    float s = 0 REP(SUM);                                                                 \
    printf("%-16s %5.2f G instructions/s  %6.1f G multiply-adds/s  (%g)\n", NAME,         \
           N * 16 / dt / 1e9, N * 16 * (double)(MACS) / dt / 1e9, s);                      \
  }

int main(void) {
  const __m512 a512 = _mm512_set1_ps(1.0f), b512 = _mm512_set1_ps(0.0f);
  const __m256 a256 = _mm256_set1_ps(1.0f), b256 = _mm256_set1_ps(0.0f);
  const __m512bh h512 = (__m512bh)_mm512_set1_epi32(0);
  const __m256bh h256 = (__m256bh)_mm256_set1_epi32(0);
#define I512(i) z##i = _mm512_set1_ps(i);
#define I256(i) z##i = _mm256_set1_ps(i);
#define S512(i) +_mm512_reduce_add_ps(z##i)
#define S256(i) +z##i[0]
#define FMA512(i) z##i = _mm512_fmadd_ps(z##i, a512, b512);
#define FMA256(i) z##i = _mm256_fmadd_ps(z##i, a256, b256);
#define DP512(i) z##i = _mm512_dpbf16_ps(z##i, h512, h512);
#define DP256(i) z##i = _mm256_dpbf16_ps(z##i, h256, h256);
  BENCH("vfmadd231ps zmm", __m512, I512, FMA512, 16, S512)
  BENCH("vfmadd231ps ymm", __m256, I256, FMA256, 8, S256)
  BENCH("vdpbf16ps zmm", __m512, I512, DP512, 32, S512)
  BENCH("vdpbf16ps ymm", __m256, I256, DP256, 16, S256)
  return 0;
}
