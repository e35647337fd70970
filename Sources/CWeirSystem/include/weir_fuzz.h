/* libFuzzer's driver, present only in builds with -sanitize=fuzzer (weir-fuzz built by `make fuzz`): SwiftPM
 * points an executable's main at the module's own entry function, so that function starts the driver. */
#ifndef WEIR_FUZZ_H
#define WEIR_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
