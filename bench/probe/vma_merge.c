/* Which kernel mappings (VMAs) merge back after an mremap move inside one reservation
 * (issues 14/16, branch movecap8). Build and run: gcc -O1 -o /tmp/vma_merge
 * bench/probe/vma_merge.c && /tmp/vma_merge. Prints, after each step, the VMAs inside
 * a 64 MiB anonymous reservation R as page ranges. Results on 6.18 are in BENCHMARKS.md
 * ("movecap8"); os::maps relies on cases A (overlay merges), F (piecewise too) and the
 * DONTUNMAP source merging back by itself. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <errno.h>
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
static char *R; static size_t RL = 64<<20;
#define K 4096UL
static void show(const char *what) {
  FILE *f = fopen("/proc/self/maps","r"); char line[512]; int n=0; int total=0;
  char out[8192]; out[0]=0;
  while (fgets(line,sizeof line,f)) { unsigned long a,b; sscanf(line,"%lx-%lx",&a,&b); total++;
    if (a >= (unsigned long)R && b <= (unsigned long)R+RL) { n++; char t[128]; snprintf(t,sizeof t," [%lx-%lx)", (a-(unsigned long)R)/K,(b-(unsigned long)R)/K); strcat(out,t);} }
  fclose(f);
  printf("%-60s vmas in R: %d %s\n", what, n, out);
}
static void touch(char *p, size_t len){ for (size_t i=0;i<len;i+=K) p[i]=1; }
static void mv(size_t from, size_t to, size_t len, int dontunmap){
  void *p = mremap(R+from*K, len*K, len*K, MREMAP_MAYMOVE|MREMAP_FIXED|(dontunmap?MREMAP_DONTUNMAP:0), R+to*K);
  if (p==MAP_FAILED) { perror("mremap"); exit(1);} }
static void overlay(size_t at, size_t len){
  void *p = mmap(R+at*K, len*K, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE|MAP_FIXED, -1, 0);
  if (p==MAP_FAILED) { perror("mmap"); exit(1);} }
static void fresh(int faulted){
  if (R) munmap(R, RL);
  R = mmap(NULL, RL, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0);
  if (faulted==1) touch(R, RL); else if (faulted==2) touch(R, K); /* one page: anon_vma exists */
}
int main(){
  printf("== A: reservation fully faulted; move 64 pages from 100 to 1000 (DONTUNMAP)\n");
  fresh(1); show("fresh");
  mv(100,1000,64,1); show("after move");
  overlay(1000,64); show("overlay dest (exactly moved range)");
  overlay(100,64); show("overlay source");
  printf("== B: anon_vma exists (1 page faulted), src/dst untouched\n");
  fresh(2); mv(100,1000,64,1); show("after move");
  overlay(1000,64); show("overlay dest");
  overlay(100,64); show("overlay source");
  printf("== C: no page ever faulted\n");
  fresh(0); mv(100,1000,64,1); show("after move");
  printf("== D: faulted; move, then madvise DONTNEED dest, then move back region next to it\n");
  fresh(1); mv(100,1000,64,1); show("after move");
  madvise(R+1000*K,64*K,MADV_DONTNEED); show("dontneed dest");
  madvise(R+1000*K,64*K,MADV_NORMAL); show("madv_normal dest");
  mprotect(R+1000*K,64*K,PROT_READ|PROT_WRITE); show("mprotect same prot dest");
  mprotect(R+1000*K,64*K,PROT_READ); mprotect(R+1000*K,64*K,PROT_READ|PROT_WRITE); show("mprotect R then RW");
  madvise(R+100*K,64*K,MADV_NOHUGEPAGE); madvise(R+100*K,64*K,MADV_HUGEPAGE);madvise(R+100*K,64*K,MADV_NOHUGEPAGE); show("madv nohuge/huge/nohuge source (whole R nohuge? no)");
  printf("== E: faulted; overlay a bigger range covering moved + partial neighbours\n");
  fresh(1); mv(100,1000,64,1); show("after move");
  overlay(990,100); show("overlay [990,1090)");
  printf("== F: overlay part of the moved range\n");
  fresh(1); mv(100,1000,64,1); overlay(1010,20); show("overlay [1010,1030)");
  overlay(1000,10); show("overlay [1000,1010)"); overlay(1030,34); show("overlay [1030,1064)");
  printf("== G: chain: move into dest, move dest onward (foreign from foreign)\n");
  fresh(1); mv(100,1000,64,1); mv(1000,2000,64,1); show("after 2 moves");
  mv(2000,1000,64,1); show("moved back to 1000");
  overlay(2000,64); show("overlay 2000"); overlay(100,64); show("overlay 100");
  printf("== H: move back to its original place (pgoff identity)\n");
  fresh(1); mv(100,1000,64,1); mv(1000,100,64,1); show("moved back to 100");
  printf("== I: no DONTUNMAP, dest then overlay source hole\n");
  fresh(1); mv(100,1000,64,0); show("after move (source unmapped)");
  overlay(100,64); show("overlay source hole");
  printf("== J: unknown flag 8 (MREMAP_RELOCATE_ANON?)\n");
  fresh(1); { void *p = mremap(R+100*K, 64*K, 64*K, MREMAP_MAYMOVE|MREMAP_FIXED|8, R+1000*K); printf("flag 8: %s\n", p==MAP_FAILED?strerror(errno):"ok"); show("after"); }
  return 0;
}
