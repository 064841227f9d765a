/* gpt2_shapes.c - the parameter tensors of GPT-2 small (124M). */
#include "gpt2_shapes.h"

size_t gpt2_small_numel(int64_t numel[GPT2_SMALL_TENSORS])
{
    const int64_t d = 768, vocab = 50257, context = 1024;
    size_t n = 0;
    numel[n++] = vocab * d;   /* wte */
    numel[n++] = context * d; /* wpe */
    for (int layer = 0; layer < 12; layer++) {
        numel[n++] = d;         /* ln_1 weight, bias */
        numel[n++] = d;
        numel[n++] = d * 3 * d; /* attn.c_attn weight, bias */
        numel[n++] = 3 * d;
        numel[n++] = d * d;     /* attn.c_proj weight, bias */
        numel[n++] = d;
        numel[n++] = d;         /* ln_2 weight, bias */
        numel[n++] = d;
        numel[n++] = d * 4 * d; /* mlp.c_fc weight, bias */
        numel[n++] = 4 * d;
        numel[n++] = 4 * d * d; /* mlp.c_proj weight, bias */
        numel[n++] = d;
    }
    numel[n++] = d; /* ln_f weight, bias */
    numel[n++] = d;
    return n;
}
