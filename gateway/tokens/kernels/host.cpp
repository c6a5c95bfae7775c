// Host build of scanner.h (g++), loaded with ctypes by gateway/tokens/native.py. The tests
// compare it with tiktoken; the benchmark reports its speed. Not used to serve requests.
#include "scanner.h"

static TokVocab tok_vocab(const tok_u32* slots, const tok_u8* blob, const tok_u32* pair_rank,
                          tok_u32 mask) {
    TokVocab v;
    v.slots = slots;
    v.blob = blob;
    v.pair_rank = pair_rank;
    v.mask = mask;
    return v;
}

extern "C" {

// What the kernel computes, one chunk ("thread") after another.
void tok_host_count(int encoding, const tok_u8* text, const tok_u32* doc_start, tok_u32 docs,
                    tok_u32 chunk, const tok_u32* slots, const tok_u8* blob,
                    const tok_u32* pair_rank, tok_u32 mask, tok_u32* counts,
                    TokLongPiece* longs, tok_u32 long_cap, tok_u32* long_count,
                    tok_u8* fallback) {
    TokVocab v = tok_vocab(slots, blob, pair_rank, mask);
    TokOut out;
    out.counts = counts;
    out.longs = longs;
    out.long_count = long_count;
    out.fallback = fallback;
    out.long_cap = long_cap;
    tok_u32 total = doc_start[docs];
    tok_u32 chunks = (total + chunk - 1) / chunk;
    for (tok_u32 c = 0; c < chunks; c++)
        tok_count_chunk(encoding, v, text, doc_start, docs, chunk, c, out);
}

// What the second kernel computes, one listed long piece ("thread") after another.
void tok_host_long(const tok_u8* text, const TokLongPiece* longs, const tok_u32* long_count,
                   tok_u32 long_cap, const tok_u32* slots, const tok_u8* blob,
                   const tok_u32* pair_rank, tok_u32 mask, tok_u64* scratch,
                   tok_u64 scratch_words, tok_u64* scratch_used, tok_u32* long_tokens) {
    TokVocab v = tok_vocab(slots, blob, pair_rank, mask);
    tok_u32 listed = *long_count < long_cap ? *long_count : long_cap;
    for (tok_u32 id = 0; id < listed; id++)
        long_tokens[id] = tok_long_piece(v, text, longs[id], scratch, scratch_words,
                                         scratch_used);
}

// Tokens of one piece of any length by the long-piece merge (tests compare it with
// tok_piece_tokens and tiktoken); TOK_NONE if `scratch` is too small.
tok_u32 tok_host_long_tokens(const tok_u8* piece, tok_u32 len, const tok_u32* slots,
                             const tok_u8* blob, const tok_u32* pair_rank, tok_u32 mask,
                             tok_u64* scratch, tok_u64 scratch_words) {
    TokVocab v = tok_vocab(slots, blob, pair_rank, mask);
    TokLongPiece lp;
    lp.start = 0;
    lp.len = len;
    lp.doc = 0;
    tok_u64 used = 0;
    return tok_long_piece(v, piece, lp, scratch, scratch_words, &used);
}

// The matches of one text, scanned from its start: their ends, in order.
tok_u32 tok_host_pieces(int encoding, const tok_u8* text, tok_u32 n, tok_u32* ends,
                        tok_u32 cap) {
    tok_u32 count = 0;
    for (tok_u32 p = 0; p < n;) {
        p = tok_next(encoding, text, p, n);
        if (count < cap) ends[count] = p;
        count++;
    }
    return count;
}

// Token ids (ranks) of one text; -1 if a match is longer than TOK_MAX_PIECE or ids overflow.
long long tok_host_encode(int encoding, const tok_u8* text, tok_u32 n, const tok_u32* slots,
                          const tok_u8* blob, const tok_u32* pair_rank, tok_u32 mask,
                          tok_u32* ids, tok_u32 cap) {
    TokVocab v = tok_vocab(slots, blob, pair_rank, mask);
    tok_u8 start[TOK_MAX_PIECE + 1];
    long long count = 0;
    for (tok_u32 p = 0; p < n;) {
        tok_u32 e = tok_next(encoding, text, p, n), len = e - p;
        if (len > TOK_MAX_PIECE) return -1;
        tok_u32 rank = tok_rank(v, text + p, len);
        if (rank != TOK_NONE) {
            if (count >= cap) return -1;
            ids[count++] = rank;
        } else {
            tok_u32 tokens = tok_merge(v, text + p, len, start);
            for (tok_u32 i = 0; i < tokens; i++) {
                if (count >= cap) return -1;
                ids[count++] = tok_rank(v, text + p + start[i], start[i + 1] - start[i]);
            }
        }
        p = e;
    }
    return count;
}

// The first sync point that is not a match boundary (scanning from the start), else n.
tok_u32 tok_host_unsound_sync(int encoding, const tok_u8* text, tok_u32 n) {
    tok_u32 p = 0;
    for (tok_u32 i = 1; i < n; i++) {
        if ((text[i] & 0xC0) == 0x80 || !tok_is_sync(text, i, n)) continue;
        while (p < i) p = tok_next(encoding, text, p, n);
        if (p != i) return i;
    }
    return n;
}

tok_u32 tok_host_class(tok_u32 cp) { return tok_class(cp); }

#ifdef TOK_CLASS_OVERRIDE
void tok_host_override(tok_u32 cp, tok_u32 cls) {
    tok_override_cp = cp;
    tok_override_class = cls;
}
#endif
}
