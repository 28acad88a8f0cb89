/* devmemtcp channel gather: copy devmem frags (offset, length) from a dma-buf's
 * host mapping into one contiguous destination, in order. Adjacent frags (one
 * ends where the next starts, as page runs from one recvmsg usually are) are
 * merged into one copy. Offsets and lengths are read through byte strides, so
 * the strided views of a parsed control buffer need no copy.
 *
 * With `stream` set, runs of at least STREAM_MIN bytes are written with
 * non-temporal stores (x86-64): a destination larger than the CPU caches is
 * not in them, and plain stores would first read every line of it from memory
 * (read for ownership) and push the caller's working set out.
 *
 * Returns the bytes copied, or -(i + 1) when frag i lies outside the dma-buf
 * or would overflow the destination (nothing past frag i is copied). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#define STREAM_MIN 4096

static void copy_run(uint8_t *dst, const uint8_t *src, uint64_t n, int stream)
{
#if defined(__x86_64__)
    if (stream && n >= STREAM_MIN) {
        uint64_t head = (16 - ((uintptr_t)dst & 15)) & 15;
        memcpy(dst, src, head);
        uint64_t i = head;
        for (; i + 64 <= n; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
            __m128i e = _mm_loadu_si128((const __m128i *)(src + i + 48));
            _mm_stream_si128((__m128i *)(dst + i), a);
            _mm_stream_si128((__m128i *)(dst + i + 16), b);
            _mm_stream_si128((__m128i *)(dst + i + 32), c);
            _mm_stream_si128((__m128i *)(dst + i + 48), e);
        }
        memcpy(dst + i, src + i, n - i);
        _mm_sfence(); /* the streamed bytes are ordered before whatever the caller writes next */
        return;
    }
#endif
    (void)stream;
    memcpy(dst, src, n);
}

int64_t dmt_gather(const uint8_t *base, uint64_t base_len,
                   const uint8_t *offs, int64_t off_stride,
                   const uint8_t *lens, int64_t len_stride,
                   int64_t n, uint8_t *dst, uint64_t dst_len, int stream)
{
    uint64_t d = 0, run_src = 0, run_len = 0;
    for (int64_t i = 0; i < n; i++) {
        uint64_t o = *(const uint64_t *)(offs + i * off_stride);
        uint64_t l = *(const uint32_t *)(lens + i * len_stride);
        if (o > base_len || l > base_len - o || l > dst_len - d - run_len) {
            if (run_len)
                copy_run(dst + d, base + run_src, run_len, stream);
            return -(i + 1);
        }
        if (run_len && o == run_src + run_len) {
            run_len += l;
            continue;
        }
        if (run_len) {
            copy_run(dst + d, base + run_src, run_len, stream);
            d += run_len;
        }
        run_src = o;
        run_len = l;
    }
    if (run_len) {
        copy_run(dst + d, base + run_src, run_len, stream);
        d += run_len;
    }
    return (int64_t)d;
}

/* A cursor over one batch's frags (the Channel's read-ahead: one recvmsg may
 * hold several messages, and a frag may straddle two of them):
 * cur[0] offsets address, cur[1] its byte stride, cur[2] lengths address,
 * cur[3] its byte stride, cur[4] frag count, cur[5] current frag, cur[6]
 * bytes of the current frag already taken. Copies the next `total` bytes into
 * dst (or only skips them when dst is NULL) and advances the cursor.
 *
 * Returns the bytes taken (fewer than `total` when the frags end first), or
 * -(i + 1) when frag i lies outside the dma-buf or the bytes overflow dst
 * (the cursor is left where it was then). */
int64_t dmt_gather_from(const uint8_t *base, uint64_t base_len, int64_t *cur,
                        uint64_t total, uint8_t *dst, uint64_t dst_len)
{
    const uint8_t *offs = (const uint8_t *)(intptr_t)cur[0];
    const uint8_t *lens = (const uint8_t *)(intptr_t)cur[2];
    int64_t off_stride = cur[1], len_stride = cur[3], n = cur[4];
    int64_t i = cur[5];
    uint64_t skip = (uint64_t)cur[6], d = 0;
    if (dst && total > dst_len)
        return -(i + 1);
    while (d < total && i < n) {
        uint64_t o = *(const uint64_t *)(offs + i * off_stride);
        uint64_t l = *(const uint32_t *)(lens + i * len_stride);
        if (o > base_len || l > base_len - o || skip > l)
            return -(i + 1);
        uint64_t k = l - skip;
        if (k > total - d)
            k = total - d;
        if (dst)
            memcpy(dst + d, base + o + skip, k);
        d += k;
        skip += k;
        if (skip == l) {
            i++;
            skip = 0;
        }
    }
    cur[5] = i;
    cur[6] = (int64_t)skip;
    return (int64_t)d;
}
