// OpenSSL's libcrypto from the system (Debian: libssl-dev, pkg-config `libcrypto`), for AEAD ciphers that
// read and write caller-owned memory (transform.aead seals into the outgoing buffer without copies).
#include <openssl/evp.h>
