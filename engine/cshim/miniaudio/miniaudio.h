/*
 * SLED's stand-in for the miniaudio header.
 *
 * llama.cpp's mtmd-helper.cpp (compiled as part of github.com/ollama/ollama/llama)
 * includes "miniaudio/miniaudio.h" to decode audio inputs of multimodal models.
 * miniaudio is not packaged by Debian and SLED serves text only, so this header
 * declares just the types and calls mtmd-helper.cpp uses, and every decoder call
 * fails with MA_NOT_IMPLEMENTED. Audio input is therefore reported as an
 * undecodable buffer (a clear error from mtmd) instead of failing the build.
 * Written for SLED; it contains no miniaudio code.
 */
#ifndef SLED_MINIAUDIO_COMPAT_H
#define SLED_MINIAUDIO_COMPAT_H

#include <stddef.h>
#include <stdint.h>

typedef int ma_result;
typedef uint32_t ma_uint32;
typedef uint64_t ma_uint64;

#define MA_SUCCESS 0
#define MA_NOT_IMPLEMENTED (-29)

typedef enum { ma_format_unknown = 0, ma_format_f32 = 5 } ma_format;

typedef struct {
    ma_format format;
    ma_uint32 channels;
    ma_uint32 sampleRate;
} ma_decoder_config;

typedef struct {
    ma_decoder_config config;
} ma_decoder;

static inline ma_decoder_config ma_decoder_config_init(ma_format format, ma_uint32 channels, ma_uint32 sampleRate) {
    ma_decoder_config c;
    c.format = format;
    c.channels = channels;
    c.sampleRate = sampleRate;
    return c;
}

static inline ma_result ma_decoder_init_memory(const void *data, size_t size, const ma_decoder_config *config, ma_decoder *decoder) {
    (void)data; (void)size; (void)config; (void)decoder;
    return MA_NOT_IMPLEMENTED; /* audio decoding is not built into SLED */
}

static inline ma_result ma_decoder_get_length_in_pcm_frames(ma_decoder *decoder, ma_uint64 *length) {
    (void)decoder;
    if (length) *length = 0;
    return MA_NOT_IMPLEMENTED;
}

static inline ma_result ma_decoder_read_pcm_frames(ma_decoder *decoder, void *frames, ma_uint64 count, ma_uint64 *read) {
    (void)decoder; (void)frames; (void)count;
    if (read) *read = 0;
    return MA_NOT_IMPLEMENTED;
}

static inline ma_result ma_decoder_uninit(ma_decoder *decoder) {
    (void)decoder;
    return MA_SUCCESS;
}

#endif /* SLED_MINIAUDIO_COMPAT_H */
