/* gpt2_device.c - the example's only CUDA calls (device memory). */
#include <stdio.h>

#include "gpt2_device.h"

#ifdef GPT2_WITH_CUDA
#include <cuda_runtime.h>

int gpt2_device_upload(const float *host, int64_t n, float **device)
{
    size_t bytes = (size_t)n * sizeof(float);
    *device = NULL;
    cudaError_t e = cudaMalloc((void **)device, bytes);
    if (e == cudaSuccess)
        e = cudaMemcpy(*device, host, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        fprintf(stderr, "CUDA: %s\n", cudaGetErrorString(e));
        if (*device)
            cudaFree(*device);
        *device = NULL;
        return 1;
    }
    return 0;
}

int gpt2_device_download(const float *device, int64_t n, float *host)
{
    cudaError_t e = cudaMemcpy(host, device, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
        fprintf(stderr, "CUDA: %s\n", cudaGetErrorString(e));
        return 1;
    }
    return 0;
}

void gpt2_device_free(float *device)
{
    cudaFree(device);
}
#else
int gpt2_device_upload(const float *host, int64_t n, float **device)
{
    (void)host;
    (void)n;
    (void)device;
    fprintf(stderr, "built without CUDA\n");
    return 1;
}

int gpt2_device_download(const float *device, int64_t n, float *host)
{
    (void)device;
    (void)n;
    (void)host;
    fprintf(stderr, "built without CUDA\n");
    return 1;
}

void gpt2_device_free(float *device)
{
    (void)device;
}
#endif
