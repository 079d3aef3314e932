// CPU kernels for XLA:CPU, called through the XLA FFI (sandbox/models/cpu_kernels.py): fused
// multi-head attention (forward and backward) and a 2-D matmul.
//
// Attention.
// Why: XLA:CPU runs attention as separate ops over materialised [B, K, M, S] score tensors
// (matmul, mask, max, exp, sum, matmul), memory-bound passes that made attention about half of
// the CPU train step (docs/design.md, "Training speed against PyTorch"). Here one task handles
// one block of queries of one head (``block``: 64 causal, 256 bidirectional, the fastest measured
// at 32 x 4 heads x 256 x 64): its scores (block x S floats) stay in cache from the QK^T
// matmul through the softmax to the PV matmul. The matmuls are single-threaded OpenBLAS sgemm
// calls (a function pointer set once by the loader); parallelism comes from XLA's own intra-op
// thread pool, so the kernel never competes with XLA for the cores.
//
// Layout: q[B, L, H, D] (already scaled by 1/sqrt(D)), k[B, S, K, D], v[B, S, K, Dv], out
// [B, L, H, Dv], lse[B, H, L]; query head h reads key/value head h / (H / K) (grouped-query
// attention). Heads are read in place through the row strides (H*D, K*D): no transposes.
// Masks: causal (query i sees keys j <= i + S - L: queries aligned to the end of the keys) or
// none (bidirectional). The forward stores the row log-sum-exp; the backward recomputes the
// probabilities from it (FlashAttention-2, Dao 2023, Alg. 2) and needs no [L, S] residual:
//   P = exp(S - lse), dV += P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
//   dQ = dS K, dK += dS^T Q.
// Backward tasks own one (batch, key/value head) each, so dK and dV accumulate without races.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// cblas_sgemm with 32-bit integers (MKL's LP64 cblas_sgemm or scipy-openblas32's scipy_cblas_sgemm),
// single-threaded: the loader sets it once
typedef void (*sgemm_t)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                        float, float*, int);
static sgemm_t g_sgemm = nullptr;
extern "C" void sandbox_set_sgemm(void* fn) { g_sgemm = reinterpret_cast<sgemm_t>(fn); }

namespace {
constexpr int kRowMajor = 101, kNo = 111, kTrans = 112;

// fn(task) for every task in [0, total), on the calling thread and on XLA's intra-op pool.
// Tasks are taken from a shared counter, so a pool thread busy with another op leaves its
// share to the caller instead of delaying it.
void parallel(ffi::ThreadPool& pool, int64_t total, std::function<void(int64_t)> fn) {
  struct Work {
    std::atomic<int64_t> next{0};
    std::mutex mu;
    std::condition_variable cv;
    int64_t done = 0;
  };
  auto work = std::make_shared<Work>();
  auto f = std::make_shared<std::function<void(int64_t)>>(std::move(fn));
  auto run = [work, f, total]() {
    int64_t did = 0;
    for (int64_t t; (t = work->next.fetch_add(1)) < total; ++did) (*f)(t);
    if (did) {
      std::lock_guard<std::mutex> lock(work->mu);
      work->done += did;
      work->cv.notify_all();
    }
  };
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  for (int64_t t = 1; t < threads && t < total; ++t) {
    auto copy = run;
    pool.Schedule(std::move(copy));
  }
  run();
  std::unique_lock<std::mutex> lock(work->mu);
  work->cv.wait(lock, [&] { return work->done >= total; });
}

struct Dims {
  int64_t b, l, h, d, s, kh, dv, g, off;
  bool causal;
  int64_t keys(int64_t l1) const { return causal ? std::min(s, l1 + off) : s; }
  int64_t seen(int64_t i, int64_t n) const { return causal ? std::min(n, i + off + 1) : n; }
};

Dims dims(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k,
          const ffi::Buffer<ffi::F32>& v, bool causal) {
  auto dq = q.dimensions(), dk = k.dimensions(), dv = v.dimensions();
  return Dims{dq[0], dq[1], dq[2], dq[3], dk[1], dk[2], dv[3], dq[2] / dk[2], dk[1] - dq[1], causal};
}

ffi::Error check(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k,
                 const ffi::Buffer<ffi::F32>& v, int64_t block) {
  auto dq = q.dimensions(), dk = k.dimensions(), dv = v.dimensions();
  if (dq.size() != 4 || dk.size() != 4 || dv.size() != 4 || dk[2] == 0 || dq[2] % dk[2] ||
      dk[1] < dq[1] || block < 1 || dq[0] != dk[0] || dk[0] != dv[0] || dk[1] != dv[1] ||
      dk[2] != dv[2] || dq[3] != dk[3])
    return ffi::Error::InvalidArgument("sandbox attention: expected q[B,L,H,D], k[B,S,K,D], "
                                       "v[B,S,K,Dv] with H % K == 0, S >= L and block >= 1");
  if (g_sgemm == nullptr) return ffi::Error::Internal("sandbox attention: sgemm not set");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> lse, bool causal, int64_t block) {
  if (auto e = check(q, k, v, block); e.failure()) return e;
  const Dims z = dims(q, k, v, causal);
  const float *pq = q.typed_data(), *pk = k.typed_data(), *pv = v.typed_data();
  float *po = out->typed_data(), *pl = lse->typed_data();
  const int64_t blocks = (z.l + block - 1) / block;
  parallel(pool, z.b * z.h * blocks, [&](int64_t task) {
    const int64_t bh = task / blocks, b = bh / z.h, h = bh % z.h, kv = h / z.g;
    const int64_t l0 = (task % blocks) * block, l1 = std::min(z.l, l0 + block), rows = l1 - l0;
    const int64_t n = z.keys(l1);
    thread_local std::vector<float> scores;
    scores.resize(block * z.s);
    float* s = scores.data();
    const float* qb = pq + ((b * z.l + l0) * z.h + h) * z.d;
    const float* kb = pk + (b * z.s * z.kh + kv) * z.d;
    const float* vb = pv + (b * z.s * z.kh + kv) * z.dv;
    float* ob = po + ((b * z.l + l0) * z.h + h) * z.dv;
    float* lb = pl + (b * z.h + h) * z.l + l0;
    g_sgemm(kRowMajor, kNo, kTrans, rows, n, z.d, 1.f, qb, z.h * z.d, kb, z.kh * z.d, 0.f, s, n);
    thread_local std::vector<float> inv;
    inv.resize(block);
    for (int64_t i = 0; i < rows; ++i) {
      float* row = s + i * n;
      const int64_t seen = z.seen(l0 + i, n);
      float m = -std::numeric_limits<float>::max();  // finite: the kernel is built with -ffast-math
      for (int64_t j = 0; j < seen; ++j) m = std::max(m, row[j]);
      float sum = 0.f;
      for (int64_t j = 0; j < seen; ++j) {
        row[j] = std::exp(row[j] - m);
        sum += row[j];
      }
      std::fill(row + seen, row + n, 0.f);
      inv[i] = 1.f / sum;
      lb[i] = m + std::log(sum);
    }
    // unnormalised P V, then one scale per output row (cheaper than scaling the [rows, n] P)
    g_sgemm(kRowMajor, kNo, kNo, rows, z.dv, n, 1.f, s, n, vb, z.kh * z.dv, 0.f, ob, z.h * z.dv);
    for (int64_t i = 0; i < rows; ++i) {
      float* r = ob + i * z.h * z.dv;
      for (int64_t d = 0; d < z.dv; ++d) r[d] *= inv[i];
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv, bool causal,
                    int64_t block) {
  if (auto e = check(q, k, v, block); e.failure()) return e;
  const Dims z = dims(q, k, v, causal);
  const float *pq = q.typed_data(), *pk = k.typed_data(), *pv = v.typed_data();
  const float *po = out.typed_data(), *pl = lse.typed_data(), *pdo = dout.typed_data();
  float *pdq = dq->typed_data(), *pdk = dk->typed_data(), *pdv = dv->typed_data();
  parallel(pool, z.b * z.kh, [&](int64_t task) {
    const int64_t b = task / z.kh, kv = task % z.kh;
    const float* kb = pk + (b * z.s * z.kh + kv) * z.d;
    const float* vb = pv + (b * z.s * z.kh + kv) * z.dv;
    float* dkb = pdk + (b * z.s * z.kh + kv) * z.d;
    float* dvb = pdv + (b * z.s * z.kh + kv) * z.dv;
    for (int64_t j = 0; j < z.s; ++j) {
      std::memset(dkb + j * z.kh * z.d, 0, z.d * sizeof(float));
      std::memset(dvb + j * z.kh * z.dv, 0, z.dv * sizeof(float));
    }
    thread_local std::vector<float> pbuf, dsbuf;
    pbuf.resize(block * z.s);
    dsbuf.resize(block * z.s);
    float *p = pbuf.data(), *ds = dsbuf.data();
    thread_local std::vector<float> delta;
    delta.resize(block);
    for (int64_t h = kv * z.g; h < (kv + 1) * z.g; ++h) {
      for (int64_t l0 = 0; l0 < z.l; l0 += block) {
        const int64_t l1 = std::min(z.l, l0 + block), rows = l1 - l0, n = z.keys(l1);
        const int64_t at = (b * z.l + l0) * z.h + h;
        const float *qb = pq + at * z.d, *ob = po + at * z.dv, *dob = pdo + at * z.dv;
        const float* lb = pl + (b * z.h + h) * z.l + l0;
        float* dqb = pdq + at * z.d;
        g_sgemm(kRowMajor, kNo, kTrans, rows, n, z.d, 1.f, qb, z.h * z.d, kb, z.kh * z.d, 0.f, p, n);
        for (int64_t i = 0; i < rows; ++i) {
          float* row = p + i * n;
          const int64_t seen = z.seen(l0 + i, n);
          for (int64_t j = 0; j < seen; ++j) row[j] = std::exp(row[j] - lb[i]);
          std::fill(row + seen, row + n, 0.f);
          const float *o = ob + i * z.h * z.dv, *g = dob + i * z.h * z.dv;
          float acc = 0.f;
          for (int64_t d = 0; d < z.dv; ++d) acc += o[d] * g[d];
          delta[i] = acc;
        }
        g_sgemm(kRowMajor, kTrans, kNo, n, z.dv, rows, 1.f, p, n, dob, z.h * z.dv, 1.f, dvb, z.kh * z.dv);
        g_sgemm(kRowMajor, kNo, kTrans, rows, n, z.dv, 1.f, dob, z.h * z.dv, vb, z.kh * z.dv, 0.f, ds, n);
        for (int64_t i = 0; i < rows; ++i) {
          float *r = ds + i * n, *pr = p + i * n;
          for (int64_t j = 0; j < n; ++j) r[j] = pr[j] * (r[j] - delta[i]);
        }
        g_sgemm(kRowMajor, kNo, kNo, rows, z.d, n, 1.f, ds, n, kb, z.kh * z.d, 0.f, dqb, z.h * z.d);
        g_sgemm(kRowMajor, kTrans, kNo, n, z.d, rows, 1.f, ds, n, qb, z.h * z.d, 1.f, dkb, z.kh * z.d);
      }
    }
  });
  return ffi::Error::Success();
}

// C[M, N] = op(A) op(B) (op: transpose or not), split along the longer of M and N into one piece
// per thread of XLA's pool, each a single-threaded sgemm. One piece per thread was the fastest of
// 1, 2 and 4 per thread inside the train step (docs/design.md, "Training speed against PyTorch").
ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                  ffi::ResultBuffer<ffi::F32> c, bool ta, bool tb) {
  auto da = a.dimensions(), db = b.dimensions(), dc = c->dimensions();
  if (da.size() != 2 || db.size() != 2 || dc.size() != 2 ||
      (ta ? da[0] : da[1]) != (tb ? db[1] : db[0]) || dc[0] != (ta ? da[1] : da[0]) ||
      dc[1] != (tb ? db[0] : db[1]))
    return ffi::Error::InvalidArgument("sandbox matmul: expected 2-D operands of matching shapes");
  if (g_sgemm == nullptr) return ffi::Error::Internal("sandbox matmul: sgemm not set");
  const int64_t m = dc[0], n = dc[1], k = ta ? da[0] : da[1], lda = da[1], ldb = db[1];
  const float *pa = a.typed_data(), *pb = b.typed_data();
  float* pc = c->typed_data();
  const bool rows = m >= n;
  const int64_t len = rows ? m : n, pieces = std::max<int64_t>(1, pool.num_threads());
  const int64_t step = ((len + pieces - 1) / pieces + 15) / 16 * 16;  // multiples of 16
  const int op_a = ta ? kTrans : kNo, op_b = tb ? kTrans : kNo;
  parallel(pool, (len + step - 1) / step, [&](int64_t p) {
    const int64_t r0 = p * step, r1 = std::min(len, r0 + step);
    if (rows)  // rows r0..r1 of C: rows of A, or columns of a transposed A
      g_sgemm(kRowMajor, op_a, op_b, r1 - r0, n, k, 1.f, ta ? pa + r0 : pa + r0 * lda, lda, pb, ldb,
              0.f, pc + r0 * n, n);
    else  // columns r0..r1 of C: columns of B, or rows of a transposed B
      g_sgemm(kRowMajor, op_a, op_b, m, r1 - r0, k, 1.f, pa, lda, tb ? pb + r0 * ldb : pb + r0, ldb,
              0.f, pc + r0, n);
  });
  return ffi::Error::Success();
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SandboxAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("block"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SandboxAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("causal")
                                  .Attr<int64_t>("block"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SandboxMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("ta")
                                  .Attr<bool>("tb"));
