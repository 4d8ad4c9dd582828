#include "ddfs_native.h"
int ddfs_native_abi(void) { return 1; }
