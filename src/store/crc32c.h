/*
 * crc32c.h — CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) in software.
 *
 * Used by the storage engine to checksum segment headers and records. Pure functions:
 * safe from any thread (the lookup tables are built once, under pthread_once).
 */
#ifndef KV_STORE_CRC32C_H
#define KV_STORE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/*
 * Extend crc (the value returned for the bytes so far; 0 to start) over n more bytes.
 * store_crc32c(0, "123456789", 9) == 0xE3069283. Chaining calls over consecutive pieces
 * gives the same result as one call over the concatenation.
 */
uint32_t store_crc32c(uint32_t crc, const void *data, size_t n);

/* The same function, always in software (the portable path; for tests that compare it
 * with the hardware instruction store_crc32c uses when the CPU has one). */
uint32_t store_crc32c_sw(uint32_t crc, const void *data, size_t n);

#endif
