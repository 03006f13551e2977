/* dp_hash.h: the hashes that place megaflows in mf_buckets (ctl/flowkey.py mf_hash, mf_seed). User space
 * computes the same places for the megaflows it writes, and a running datapath keeps them across restarts, so
 * this file is part of the map layout (ctl/datapath/dpif_xdp.py LAYOUT_FILES): a change here is a new layout. */
#ifndef XDPSWITCH_DP_HASH_H
#define XDPSWITCH_DP_HASH_H

#include "dp_structs.h"

#define MF_HASH_A 0x9e3779b97f4a7c15ULL
#define MF_HASH_B 0xc2b2ae3d27d4eb4fULL
#define MF_MUL_A 0xff51afd7ed558ccdULL
#define MF_MUL_B 0xc4ceb9fe1a85ec53ULL

/* The two lanes folded into 64 bits. A product's low bits see only its factors' low bits: murmur3's fmix64
 * folds every bit into the low ones (the bucket is taken from them). */
static __always_inline __u64 mf_fold(__u64 a, __u64 b)
{
    __u64 h = a ^ (b >> 29) ^ (b << 35);
    h ^= h >> 33;
    h *= MF_MUL_A;
    h ^= h >> 33;
    h *= MF_MUL_B;
    return h ^ (h >> 33);
}

/* A megaflow's place: its masked key's words hashed, seeded, 64 bits, but only the words its subtable's mask covers
 * (a word the mask leaves out is zero in every megaflow of the subtable: hashing it tells them apart no better).
 * Word i goes into lane a (even i) or b (odd i), two independent multiply chains. Masks mostly cover 3 to 5 of the
 * 13 words, so this is a much shorter chain of multiplies. k is the packet's key, masked here with m word by word.
 * The branches are the mask's: the same for every packet that visits the subtable. */
static __always_inline __u64 mf_hash_masked(const __u64 *k, const __u64 *m, __u32 seed)
{
    __u64 a = MF_HASH_A ^ seed, b = MF_HASH_B ^ ((__u64)seed << 32);
#pragma unroll
    for (int i = 0; i < FLOW_KEY_WORDS; i++) {
        __u64 mi = m[i];
        if (mi) {
            if (i & 1)
                b = (b ^ (k[i] & mi)) * MF_MUL_B;
            else
                a = (a ^ (k[i] & mi)) * MF_MUL_A;
        }
    }
    return mf_fold(a, b);
}

/* Whether key k masked with m is a megaflow's masked key mk: compared over the words m covers (user space writes
 * every megaflow masked, so the others are zero in mk as in the masked packet). */
static __always_inline int mf_key_match(const __u64 *k, const __u64 *m, const __u64 *mk)
{
    __u64 d = 0;
#pragma unroll
    for (int i = 0; i < FLOW_KEY_WORDS; i++) {
        __u64 mi = m[i];
        if (mi)
            d |= (k[i] & mi) ^ mk[i];
    }
    return d == 0;
}

/* A subtable's seed: dp_config.hash_seed and the mask id (a different seed per subtable, so one masked key in two
 * subtables lands in two places; ctl/flowkey.py mf_seed). */
static __always_inline __u32 mf_seed(__u32 seed, __u32 mask_id)
{
    return seed ^ (mask_id * 0x9e3779b9U);
}

#endif
