#ifndef DDFS_NATIVE_H
#define DDFS_NATIVE_H
int ddfs_native_abi(void);
#endif
