// cpu.h — the CPU runtime: worker and scheduler threads that run the compiled task graph with the
// same event semantics as the CUDA megakernel.
#ifndef MPK_RUNTIME_CPU_H
#define MPK_RUNTIME_CPU_H

#include "kernels/task.h"
#include "runtime/batch.h"

// Runs one task (rows clipped to the batch's token count) with the CPU task kernels.
void mpk_cpu_run_task(const mpk_task_desc *task, const mpk_variant *variant, const mpk_batch *batch);

#include "mpk.h"
// The processor's name and the streaming read bandwidth of all workers (bytes/s).
mpk_status mpk_cpu_device_info(mpk_kernel *kernel, char *name, size_t name_len, double *read_bw);
#endif
