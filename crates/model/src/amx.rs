//! Intel AMX tiles (Sapphire Rapids and later): detection, the Linux permission request, and
//! one kernel, a 32 × 32 block of C += A · B in bf16 with f32 accumulation.
//!
//! A tile is up to 16 rows of 64 bytes. `tdpbf16ps C, A, B` takes A as 16 rows of 32 bf16
//! (16 pairs along k), B as 16 rows of 16 pairs (row p holds, for each of 16 columns, the bf16
//! pair k = 2p, 2p + 1: the "VNNI" layout), and adds A · B into C, 16 × 16 f32.
//! Linux grants the tile state only after `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`
//! (https://docs.kernel.org/arch/x86/xstate.html), and a thread must load a tile
//! configuration (`ldtilecfg`) before its first tile instruction: each kernel call loads it
//! on the thread that runs it.
//!
//! Instructions are written as inline assembly: Rust's AMX intrinsics are not stable.

use std::sync::OnceLock;

/// Whether this processor has AMX-BF16 and the kernel granted the tile state.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID leaf 7, sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
    let edx = __cpuid_count(7, 0).edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only asks the kernel to enable the tile state
    // for this process; it reads and writes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Rows and columns of the C block one kernel call computes.
pub const BLOCK: usize = 32;

/// The tile configuration: palette 1, all eight tiles 16 rows × 64 bytes.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
    reserved2: [u8; 16],
}

/// Loads the tile configuration on this thread; `release` undoes it.
///
/// # Safety
/// `available()` must be true.
#[cfg(target_arch = "x86_64")]
pub unsafe fn configure() {
    let mut cfg = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
        reserved2: [0; 16],
    };
    for t in 0..8 {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    std::arch::asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
}

/// # Safety
/// `configure` ran on this thread.
#[cfg(target_arch = "x86_64")]
pub unsafe fn release() {
    std::arch::asm!("tilerelease", options(nostack, nomem));
}

/// C (32 × 32 f32, row-major, rows `c_stride` bytes apart) = A · B over the first `steps` of
/// `ks` steps of 32 along K. A: two blocks of 16 rows, each `ks` contiguous tiles (16 rows ×
/// 32 bf16), the second block right after the first. B: `ks` steps of two contiguous tiles
/// (16 pair rows × 16 columns each, the VNNI layout), columns 0..16 then 16..32.
///
/// # Safety
/// `configure` ran on this thread; steps ≤ ks; A holds 2 · ks tiles, B 2 · ks tiles, and C
/// 32 rows of 32 f32 at `c_stride` bytes apart.
#[cfg(target_arch = "x86_64")]
pub unsafe fn block(
    a: *const u16,
    b: *const u32,
    ks: usize,
    steps: usize,
    c: *mut f32,
    c_stride: usize,
) {
    use std::arch::asm;
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    // Every tile is 16 rows of 64 bytes, contiguous.
    let stride = 64usize;
    for s in 0..steps {
        let a0 = a.add(s * 512);
        let a1 = a.add((ks + s) * 512);
        let b0 = b.add(s * 512);
        let b1 = b0.add(256);
        asm!(
            "tileloadd tmm4, [{a0} + {st}*1]",
            "tileloadd tmm6, [{b0} + {st}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {st}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {st}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            st = in(reg) stride,
            options(nostack, readonly)
        );
    }
    let c_row = c_stride / 4;
    asm!(
        "tilestored [{c00} + {sc}*1], tmm0",
        "tilestored [{c01} + {sc}*1], tmm1",
        "tilestored [{c10} + {sc}*1], tmm2",
        "tilestored [{c11} + {sc}*1], tmm3",
        c00 = in(reg) c,
        c01 = in(reg) c.add(16),
        c10 = in(reg) c.add(16 * c_row),
        c11 = in(reg) c.add(16 * c_row + 16),
        sc = in(reg) c_stride,
        options(nostack)
    );
}
