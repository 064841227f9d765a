/* gpt2_shapes.h - the parameter tensors of GPT-2 small (124M). */
#ifndef GPT2_SHAPES_H
#define GPT2_SHAPES_H
#include <stddef.h>
#include <stdint.h>

/* GPT-2 small has 148 parameter tensors. */
#define GPT2_SMALL_TENSORS 148

/* Writes the element count of each of GPT-2 small's parameter tensors, in
 * the order PyTorch enumerates them (wte, wpe, 12 blocks, ln_f), to
 * numel[0 .. GPT2_SMALL_TENSORS - 1]; returns GPT2_SMALL_TENSORS. */
size_t gpt2_small_numel(int64_t numel[GPT2_SMALL_TENSORS]);

#endif
