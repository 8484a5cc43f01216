/* The C interface of libltxmps_spm, the private library that holds SentencePiece for the T5 tokenizer.
 *
 * The pipeline loads it into a link-map namespace of its own (Note [SentencePiece isolation] in
 * src/sentencepiece_isolation.cpp), where it runs on its own copies of the C and C++ runtimes. So only C types
 * cross this interface: no C++ objects, no exceptions, and no heap memory changes hands; the caller owns every
 * buffer, and a model handle is released with ltxmps_spm_free() only. */
#ifndef LTXMPS_SPM_H
#define LTXMPS_SPM_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define LTXMPS_SPM_API __attribute__((visibility("default")))
#else
#define LTXMPS_SPM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a signature below changes; the loader refuses a library with another number. */
#define LTXMPS_SPM_ABI_VERSION 1

typedef struct ltxmps_spm ltxmps_spm;

typedef int (*ltxmps_spm_abi_version_fn)(void);
typedef ltxmps_spm* (*ltxmps_spm_load_fn)(const char* path, char* error, size_t error_capacity);
typedef void (*ltxmps_spm_free_fn)(ltxmps_spm* model);
typedef int32_t (*ltxmps_spm_piece_size_fn)(const ltxmps_spm* model);
typedef int32_t (*ltxmps_spm_piece_to_id_fn)(const ltxmps_spm* model, const char* piece, size_t length);
typedef int64_t (*ltxmps_spm_id_to_piece_fn)(const ltxmps_spm* model, int32_t id, char* out, size_t capacity);
typedef int64_t (*ltxmps_spm_encode_fn)(const ltxmps_spm* model, const char* text, size_t length, int32_t* ids,
                                        size_t capacity, char* error, size_t error_capacity);

/* LTXMPS_SPM_ABI_VERSION of the library. */
LTXMPS_SPM_API int ltxmps_spm_abi_version(void);
/* Loads a SentencePiece model file. NULL on failure, with the reason written to `error` (NUL-terminated,
 * truncated to `error_capacity`). */
LTXMPS_SPM_API ltxmps_spm* ltxmps_spm_load(const char* path, char* error, size_t error_capacity);
LTXMPS_SPM_API void ltxmps_spm_free(ltxmps_spm* model);
/* The number of pieces of the model. */
LTXMPS_SPM_API int32_t ltxmps_spm_piece_size(const ltxmps_spm* model);
/* The id of a piece (the unknown id when the model has no such piece). */
LTXMPS_SPM_API int32_t ltxmps_spm_piece_to_id(const ltxmps_spm* model, const char* piece, size_t length);
/* The byte length of piece `id`, of which min(length, capacity) bytes are copied to `out`; -1 when `id` is not
 * a piece of the model. */
LTXMPS_SPM_API int64_t ltxmps_spm_id_to_piece(const ltxmps_spm* model, int32_t id, char* out, size_t capacity);
/* SentencePieceProcessor::Encode of `text`: returns the number of ids and writes min(count, capacity) of them to
 * `ids` (call again with a larger buffer when count > capacity); -1 on failure, with the reason in `error`. */
LTXMPS_SPM_API int64_t ltxmps_spm_encode(const ltxmps_spm* model, const char* text, size_t length, int32_t* ids,
                                         size_t capacity, char* error, size_t error_capacity);

#ifdef __cplusplus
}
#endif

#endif /* LTXMPS_SPM_H */
