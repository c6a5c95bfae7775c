// The GPU counter's kernels: one thread per `chunk` bytes of the batch (see scanner.h,
// tok_count_chunk), then one thread per piece the first listed as too long (tok_long_piece). Compiled at run time with NVRTC by gateway/tokens/gpu.py.
#include "scanner.h"

extern "C" __global__ void tok_count_kernel(
    int encoding, const tok_u8* __restrict__ text, const tok_u32* __restrict__ doc_start,
    tok_u32 docs, tok_u32 chunk, tok_u32 chunks, const tok_u32* __restrict__ slots,
    const tok_u8* __restrict__ blob, const tok_u32* __restrict__ pair_rank, tok_u32 mask,
    tok_u32* counts, TokLongPiece* longs, tok_u32 long_cap, tok_u32* long_count,
    tok_u8* fallback) {
    tok_u32 id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= chunks) return;
    TokVocab v;
    v.slots = slots;
    v.blob = blob;
    v.pair_rank = pair_rank;
    v.mask = mask;
    TokOut out;
    out.counts = counts;
    out.longs = longs;
    out.long_count = long_count;
    out.fallback = fallback;
    out.long_cap = long_cap;
    tok_count_chunk(encoding, v, text, doc_start, docs, chunk, id, out);
}

extern "C" __global__ void tok_long_kernel(
    const tok_u8* __restrict__ text, const TokLongPiece* __restrict__ longs,
    const tok_u32* __restrict__ long_count, tok_u32 long_cap,
    const tok_u32* __restrict__ slots, const tok_u8* __restrict__ blob,
    const tok_u32* __restrict__ pair_rank, tok_u32 mask, tok_u64* scratch,
    tok_u64 scratch_words, tok_u64* scratch_used, tok_u32* long_tokens) {
    tok_u32 id = blockIdx.x * blockDim.x + threadIdx.x;
    tok_u32 listed = *long_count < long_cap ? *long_count : long_cap;
    if (id >= listed) return;
    TokVocab v;
    v.slots = slots;
    v.blob = blob;
    v.pair_rank = pair_rank;
    v.mask = mask;
    long_tokens[id] = tok_long_piece(v, text, longs[id], scratch, scratch_words, scratch_used);
}
