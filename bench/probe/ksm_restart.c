// review13 (session 13): from 6.17, one mremap(MREMAP_DONTUNMAP) over a KSM-mergeable source
// of two mappings, interrupted by an SA_RESTART signal, can report success with its first
// mapping zeroed at the destination (25 of 200 here); one call per mapping: 0 of 200.
// Build: cc -O2 -o /tmp/ksm_restart bench/probe/ksm_restart.c; run: /tmp/ksm_restart 32 1
// (argument 2: 1 = one call over both mappings, 0 = one call per mapping).
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>
static volatile long sigs;
static void h(int s){(void)s;sigs++;}
#define M (1UL<<20)
int main(int argc,char**argv){
  size_t H = (argc>1?atol(argv[1]):32)*M;   /* each half */
  int multi = argc>2?atoi(argv[2]):1;
  size_t L=8*H;
  char *b=mmap(0,L,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE,-1,0);
  if(madvise(b,L,MADV_MERGEABLE)){perror("MADV_MERGEABLE");return 1;}
  struct sigaction sa={0}; sa.sa_handler=h; sa.sa_flags=SA_RESTART; sigaction(SIGALRM,&sa,0);
  struct itimerval it={{0,2000},{0,2000}}; setitimer(ITIMER_REAL,&it,0);
  long ok=0,fail=0,lost=0;
  for(int round=0; round<200; round++){
    char *src=b+(round%2)*4*H, *dst=b+((round+1)%2)*4*H;
    /* build a 2-VMA object at src: first half moved in from elsewhere */
    char *tmp=b+(round%2)*4*H+2*H;
    memset(tmp,0x11,H);
    if(mremap(tmp,H,H,MREMAP_MAYMOVE|MREMAP_FIXED|MREMAP_DONTUNMAP,src)==MAP_FAILED){perror("prep");return 1;}
    memset(src+H,0x22,H);
    void *r;
    if(multi) r=mremap(src,2*H,2*H,MREMAP_MAYMOVE|MREMAP_FIXED|MREMAP_DONTUNMAP,dst);
    else { r=mremap(src,H,H,MREMAP_MAYMOVE|MREMAP_FIXED|MREMAP_DONTUNMAP,dst);
           if(r!=MAP_FAILED) r=mremap(src+H,H,H,MREMAP_MAYMOVE|MREMAP_FIXED|MREMAP_DONTUNMAP,dst+H); }
    if(r==MAP_FAILED){fail++; continue;}
    ok++;
    long z=0; for(size_t i=0;i<2*H;i+=4096) z+= dst[i]!=(i<H?0x11:0x22);
    if(z){lost++; if(lost<4) printf("round %d: success but %ld pages wrong at dest\n",round,z);}
    madvise(dst,2*H,MADV_DONTNEED); madvise(src,4*H,MADV_DONTNEED);
  }
  printf("multi=%d ok=%ld fail=%ld silently_wrong=%ld signals=%ld\n",multi,ok,fail,lost,sigs);
  return 0;
}
