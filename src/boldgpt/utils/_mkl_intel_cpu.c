/* Loaded by boldgpt.utils.mkl (never imported as a Python module).
 *
 * Intel MKL picks its optimised kernels only after this function of its own says the CPU
 * is an Intel one; on other x86-64 CPUs (AMD) it answers 0 and MKL falls back to generic
 * code, although the CPU has the instructions those kernels use (MKL still chooses
 * among them by the CPU's feature flags). Loaded into the process's global symbol scope
 * before torch, this definition is the one torch's MKL calls. */
int mkl_serv_intel_cpu_true(void) { return 1; }
