//! The system-call filter of the local sandbox, the counterpart of the RuntimeDefault profile
//! Kubernetes pods get: the calls Docker's default profile refuses to a container without
//! extra capabilities are refused here with `EPERM`.
//!
//! The filters are compiled once by `seccompiler` (a deny list: every call not named is
//! allowed) and handed to bubblewrap as files it reads through inherited descriptors
//! (`--add-seccomp-fd`); bubblewrap installs them right before it executes the program, so
//! nothing of ours needs `unsafe`. Two filters, because a filter has one answer: the deny list
//! answers `EPERM`, and `clone3` answers `ENOSYS` so that the C library falls back to `clone`,
//! whose namespace flags the first filter can see (`clone3` passes them in memory, where a
//! filter cannot look). A call of a foreign architecture (the 32-bit `int 0x80` entry on
//! x86-64) kills the process, and the x32 numbers of the denied calls are denied as well.
//!
//! The rule it keeps: a program never gets a system call that lets it leave, inspect or
//! weaken its sandbox or the host (mounts, namespaces, kernel keyrings, eBPF, io_uring,
//! tracing, modules, clocks, swap, reboot), even where the kernel would allow it to an
//! unprivileged user.

use std::collections::BTreeMap;

use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Where the x32 ABI numbers start on x86-64 (`__X32_SYSCALL_BIT`).
#[cfg(target_arch = "x86_64")]
const X32_BIT: i64 = 0x4000_0000;

macro_rules! calls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as i64)),*]
    };
}

/// The calls refused with `EPERM` whatever their arguments, by name (without `SYS_`).
pub(super) fn denied() -> Vec<(&'static str, i64)> {
    let common: &[(&str, i64)] = calls![
        SYS_acct,
        SYS_add_key,
        SYS_bpf,
        SYS_clock_adjtime,
        SYS_clock_settime,
        SYS_delete_module,
        SYS_fanotify_init,
        SYS_finit_module,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fsopen,
        SYS_fspick,
        SYS_get_mempolicy,
        SYS_init_module,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_io_uring_setup,
        SYS_kcmp,
        SYS_kexec_file_load,
        SYS_kexec_load,
        SYS_keyctl,
        SYS_lookup_dcookie,
        SYS_mbind,
        SYS_mount,
        SYS_mount_setattr,
        SYS_move_mount,
        SYS_move_pages,
        SYS_name_to_handle_at,
        SYS_nfsservctl,
        SYS_open_by_handle_at,
        SYS_open_tree,
        SYS_perf_event_open,
        SYS_pidfd_getfd,
        SYS_pivot_root,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_ptrace,
        SYS_quotactl,
        SYS_quotactl_fd,
        SYS_reboot,
        SYS_request_key,
        SYS_set_mempolicy,
        SYS_setdomainname,
        SYS_sethostname,
        SYS_setns,
        SYS_settimeofday,
        SYS_swapoff,
        SYS_swapon,
        SYS_syslog,
        SYS_umount2,
        SYS_unshare,
        SYS_userfaultfd,
        SYS_vhangup,
    ];
    let mut all = common.to_vec();
    // x86-64 keeps a few old calls the generic table dropped. (`vm86`, `vm86old`, `stime` and
    // `umount` exist only for 32-bit x86, whose entry the architecture check already refuses;
    // `create_module`, `get_kernel_syms` and `query_module` are gone from the kernel.)
    #[cfg(target_arch = "x86_64")]
    all.extend_from_slice(calls![
        SYS__sysctl,
        SYS_ioperm,
        SYS_iopl,
        SYS_sysfs,
        SYS_uselib,
        SYS_ustat,
    ]);
    all
}

/// `clone` flags that make a new namespace: refused like `unshare`.
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// `personality` values Docker allows (Linux, the 32-bit compatibility flavours, and the
/// query `0xffffffff`); anything else (e.g. switching address-space randomisation off) is
/// refused.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The two compiled filters, as the bytes bubblewrap reads (`struct sock_filter` array).
#[derive(Debug, Clone)]
pub(super) struct Filters {
    /// The deny list, answering `EPERM`.
    pub deny: Vec<u8>,
    /// `clone3`, answering `ENOSYS`.
    pub clone3: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the system-call filter: {0}")]
pub struct FilterError(String);

/// Compiles both filters for the architecture the worker runs on.
pub(super) fn build() -> Result<Filters, FilterError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| FilterError(format!("{}: {e:?}", std::env::consts::ARCH)))?;
    let err = |e: seccompiler::BackendError| FilterError(e.to_string());
    let condition = |arg, op, value| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(err)
    };

    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in denied() {
        deny.insert(nr, Vec::new());
        #[cfg(target_arch = "x86_64")]
        deny.insert(nr | X32_BIT, Vec::new());
    }
    // On the architectures we build for, `clone`'s flags are its first argument.
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        clone_rules.push(
            SeccompRule::new(vec![condition(0, SeccompCmpOp::MaskedEq(flag), flag)?])
                .map_err(err)?,
        );
    }
    deny.insert(libc::SYS_clone, clone_rules);
    let mut personality = Vec::new();
    for allowed in PERSONALITIES {
        personality.push(condition(0, SeccompCmpOp::Ne, allowed)?);
    }
    deny.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(personality).map_err(err)?],
    );
    let deny = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;

    let mut clone3: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    #[cfg(target_arch = "x86_64")]
    clone3.insert(libc::SYS_clone3 | X32_BIT, Vec::new());
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;

    let bytes = |filter: SeccompFilter| -> Result<Vec<u8>, FilterError> {
        let program = BpfProgram::try_from(filter).map_err(err)?;
        Ok(program
            .iter()
            .flat_map(|i| {
                let mut b = Vec::with_capacity(8);
                b.extend_from_slice(&i.code.to_ne_bytes());
                b.push(i.jt);
                b.push(i.jf);
                b.extend_from_slice(&i.k.to_ne_bytes());
                b
            })
            .collect())
    };
    Ok(Filters {
        deny: bytes(deny)?,
        clone3: bytes(clone3)?,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn both_filters_compile_to_whole_instructions() {
        let filters = build().unwrap();
        assert!(!filters.deny.is_empty() && filters.deny.len().is_multiple_of(8));
        assert!(!filters.clone3.is_empty() && filters.clone3.len().is_multiple_of(8));
        // The kernel takes at most 4096 instructions per filter.
        assert!(filters.deny.len() / 8 < 4096, "{}", filters.deny.len() / 8);
    }

    #[test]
    fn the_deny_list_names_each_call_once_and_keeps_the_basics_allowed() {
        let list = denied();
        let mut numbers: Vec<i64> = list.iter().map(|(_, nr)| *nr).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), list.len());
        for basic in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_mmap,
        ] {
            assert!(!numbers.contains(&basic), "{basic}");
        }
    }
}
