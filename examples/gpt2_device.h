/* gpt2_device.h - device memory for the example; no-ops without CUDA. */
#ifndef GPT2_DEVICE_H
#define GPT2_DEVICE_H
#include <stdint.h>
/* Copy n floats to new device memory; returns 0 on success. */
int gpt2_device_upload(const float *host, int64_t n, float **device);
/* Copy n floats from device memory back to host; returns 0 on success. */
int gpt2_device_download(const float *device, int64_t n, float *host);
void gpt2_device_free(float *device);
#endif
