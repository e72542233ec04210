// Session 13: with RLIMIT_DATA below the data size, mremap(MREMAP_DONTUNMAP | MREMAP_FIXED)
// unmaps its destination and then fails with ENOMEM (6.18), and MAP_FIXED_NOREPLACE over
// the hole fails the same way: the lost-destination path of a move, on a real kernel.
// Build: cc -O2 -o /tmp/rl bench/probe/rlimit_data_mremap.c && /tmp/rl
#define _GNU_SOURCE
#include <stdio.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
int main(){
  size_t M=1<<20; char *b=mmap(0,64*M,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE,-1,0);
  for(size_t i=0;i<4*M;i+=4096) b[i]=1;
  struct rlimit r={.rlim_cur=1<<20,.rlim_max=RLIM_INFINITY}; // far below current
  if(setrlimit(RLIMIT_DATA,&r)) perror("setrlimit");
  void *p=mremap(b,4*M,4*M,MREMAP_MAYMOVE|MREMAP_FIXED|MREMAP_DONTUNMAP,b+32*M);
  int e=errno;
  printf("mremap %s errno %s; dest msync %d\n", p==MAP_FAILED?"failed":"ok", strerror(e), msync(b+32*M,4*M,MS_ASYNC));
  void *q=mmap(b+32*M,4*M,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE|MAP_FIXED_NOREPLACE,-1,0);
  printf("noreplace %s %s\n", q==MAP_FAILED?"failed":"ok", q==MAP_FAILED?strerror(errno):"");
}
