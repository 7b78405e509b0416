//! Kernel structure member offsets from BTF, and tracepoint field offsets from tracefs format
//! files: aya's Rust eBPF has no CO-RE relocations, so the programs get these as a global.
use std::path::Path;

use btf_rs::{Backend, Btf, Type};
use sockact_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("reading BTF from {path}: {source}")]
    Btf {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("BTF type of {0} is not a struct")]
    NotStruct(String),
    #[error("reading tracepoint format {path}: {source}")]
    Format {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint format {path} has no field {field}")]
    NoField { path: String, field: String },
}

/// Where a member sits: byte offset, and for a bitfield its bit within that byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberPos {
    pub byte: u32,
    pub bit_in_byte: u32,
    pub bitfield: Option<u32>,
}

pub struct KernelBtf {
    btf: Btf,
    /// Structs already found: a mapped BTF is searched by name from the start each time.
    structs: std::cell::RefCell<std::collections::HashMap<String, btf_rs::Struct>>,
}

impl KernelBtf {
    pub fn open(path: &Path) -> Result<Self, OffsetError> {
        // Mapped, parsed only where looked up: the few structs the programs need, not the
        // whole kernel's types (much faster to start and far less memory). A file that cannot
        // be mapped (older kernels' sysfs) is read whole.
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .map_err(|source| OffsetError::Btf {
                path: path.display().to_string(),
                source,
            })?;
        Ok(KernelBtf {
            btf,
            structs: Default::default(),
        })
    }

    fn strip(&self, mut t: Type) -> Result<Type, btf_rs::Error> {
        // Follow typedef/const/volatile/restrict/type tags down to the named type.
        for _ in 0..16 {
            match &t {
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let inner = t.as_btf_type().expect("chained kinds are BTF types");
                    t = self.btf.resolve_chained_type(inner)?;
                }
                _ => break,
            }
        }
        Ok(t)
    }

    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, OffsetError> {
        if let Some(s) = self.structs.borrow().get(name) {
            return Ok(s.clone());
        }
        let found = self.search_struct(name)?;
        self.structs
            .borrow_mut()
            .insert(name.to_owned(), found.clone());
        Ok(found)
    }

    fn search_struct(&self, name: &str) -> Result<btf_rs::Struct, OffsetError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| OffsetError::NoStruct(name.into()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| OffsetError::NoStruct(name.into()))
    }

    /// Looks for `member` in `s`, descending into anonymous structs and unions; returns its bit
    /// offset from the start of `s`, its bitfield size and its type.
    fn member_in(
        &self,
        s: &btf_rs::Struct,
        member: &str,
        depth: u32,
    ) -> Option<(u32, Option<u32>, Type)> {
        if depth > 8 {
            return None;
        }
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let ty = self.btf.resolve_chained_type(m).ok()?;
            if name == member {
                return Some((m.bit_offset(), m.bitfield_size(), ty));
            }
            if name.is_empty()
                && let Ok(Type::Struct(inner) | Type::Union(inner)) = self.strip(ty)
                && let Some((off, bits, t)) = self.member_in(&inner, member, depth + 1)
            {
                return Some((m.bit_offset() + off, bits, t));
            }
        }
        None
    }

    /// The position of a member path like `["__sk_common", "skc_family"]` in `struct name`.
    pub fn member(&self, strukt: &str, path: &[&str]) -> Result<MemberPos, OffsetError> {
        let mut current = self.find_struct(strukt)?;
        let mut bits = 0u32;
        let mut bitfield = None;
        for (i, part) in path.iter().enumerate() {
            let (off, bf, ty) =
                self.member_in(&current, part, 0)
                    .ok_or_else(|| OffsetError::NoMember {
                        strukt: strukt.into(),
                        member: path[..=i].join("."),
                    })?;
            bits += off;
            bitfield = bf;
            if i + 1 < path.len() {
                current = match self.strip(ty) {
                    Ok(Type::Struct(s) | Type::Union(s)) => s,
                    _ => return Err(OffsetError::NotStruct(path[..=i].join("."))),
                };
            }
        }
        Ok(MemberPos {
            byte: bits / 8,
            bit_in_byte: bits % 8,
            bitfield,
        })
    }

    /// Whether `enum name` has the enumerator `value` (e.g. a helper in `enum bpf_func_id`).
    pub fn has_enum_value(&self, name: &str, value: &str) -> bool {
        let Ok(types) = self.btf.resolve_types_by_name(name) else {
            return false;
        };
        types.iter().any(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .any(|m| self.btf.resolve_name(m).is_ok_and(|n| n == value)),
            _ => false,
        })
    }

    fn offset(&self, strukt: &str, path: &[&str]) -> Result<u32, OffsetError> {
        Ok(self.member(strukt, path)?.byte)
    }

    fn size_of(&self, name: &str) -> Result<u32, OffsetError> {
        Ok(self.find_struct(name)?.size() as u32)
    }

    /// Every offset the programs use. Tracepoint fields come from `tracefs`.
    pub fn kernel_offsets(&self, tracefs: &Path) -> Result<KernelOffsets, OffsetError> {
        let reuseport = self.member("sock", &["__sk_common", "skc_reuseport"])?;
        let fork = tracefs.join("events/sched/sched_process_fork/format");
        let exit = tracefs.join("events/sched/sched_process_exit/format");
        // Optional tracepoints (sk_data_ready is 6.6+): a zero offset tells its program to do
        // nothing, and attaching it fails and is reported.
        let ready = tracefs.join("events/sock/sk_data_ready/format");
        let state = tracefs.join("events/sock/inet_sock_set_state/format");
        let optional = |path: &Path, field: &str| format_field_offset(path, field).unwrap_or(0);
        let accept_queue = self.offset("inet_connection_sock", &["icsk_accept_queue"])?
            + self.offset("request_sock_queue", &["rskq_accept_tail"])?;
        let receive_queue = self.offset("sock", &["sk_receive_queue"])?;
        Ok(KernelOffsets {
            valid: 1,
            task_files: self.offset("task_struct", &["files"])?,
            task_real_parent: self.offset("task_struct", &["real_parent"])?,
            task_group_leader: self.offset("task_struct", &["group_leader"])?,
            task_tgid: self.offset("task_struct", &["tgid"])?,
            task_thread_pid: self.offset("task_struct", &["thread_pid"])?,
            task_exit_code: self.offset("task_struct", &["exit_code"])?,
            pid_level: self.offset("pid", &["level"])?,
            pid_numbers: self.offset("pid", &["numbers"])?,
            upid_size: self.size_of("upid")?,
            upid_nr: self.offset("upid", &["nr"])?,
            files_fdt: self.offset("files_struct", &["fdt"])?,
            fdt_max_fds: self.offset("fdtable", &["max_fds"])?,
            fdt_fd: self.offset("fdtable", &["fd"])?,
            file_private_data: self.offset("file", &["private_data"])?,
            file_inode: self.offset("file", &["f_inode"])?,
            inode_ino: self.offset("inode", &["i_ino"])?,
            inode_mode: self.offset("inode", &["i_mode"])?,
            socket_sk: self.offset("socket", &["sk"])?,
            sk_family: self.offset("sock", &["__sk_common", "skc_family"])?,
            sk_state: self.offset("sock", &["__sk_common", "skc_state"])?,
            sk_num: self.offset("sock", &["__sk_common", "skc_num"])?,
            sk_dport: self.offset("sock", &["__sk_common", "skc_dport"])?,
            sk_rcv_saddr: self.offset("sock", &["__sk_common", "skc_rcv_saddr"])?,
            sk_daddr: self.offset("sock", &["__sk_common", "skc_daddr"])?,
            sk_v6_rcv_saddr: self.offset("sock", &["__sk_common", "skc_v6_rcv_saddr"])?,
            sk_v6_daddr: self.offset("sock", &["__sk_common", "skc_v6_daddr"])?,
            sk_net: self.offset("sock", &["__sk_common", "skc_net"])?,
            net_ns_inum: self.offset("net", &["ns", "inum"])?,
            sk_reuseport_byte: reuseport.byte,
            sk_reuseport_mask: 1 << reuseport.bit_in_byte,
            sk_ack_backlog: self.offset("sock", &["sk_ack_backlog"])?,
            sk_max_ack_backlog: self.offset("sock", &["sk_max_ack_backlog"])?,
            unix_addr: self.offset("unix_sock", &["addr"])?,
            unix_address_len: self.offset("unix_address", &["len"])?,
            unix_address_name: self.offset("unix_address", &["name"])?,
            tp_fork_child_pid: format_field_offset(&fork, "child_pid")?,
            tp_exit_group_dead: format_field_offset(&exit, "group_dead").unwrap_or(0),
            sk_socket: self.offset("sock", &["sk_socket"])?,
            socket_alloc_inode: self.offset("socket_alloc", &["vfs_inode"])?,
            sk_drops: self.offset("sock", &["sk_drops"])?,
            sk_err: self.offset("sock", &["sk_err"])?,
            sk_accept_tail: accept_queue,
            request_sock_sk: self.offset("request_sock", &["sk"])?,
            sk_receive_queue_tail: receive_queue + self.offset("sk_buff_head", &["prev"])?,
            sk_receive_queue_len: receive_queue + self.offset("sk_buff_head", &["qlen"])?,
            skb_sk: self.offset("sk_buff", &["sk"])?,
            tp_ready_skaddr: optional(&ready, "skaddr"),
            tp_state_skaddr: optional(&state, "skaddr"),
            tp_state_old: optional(&state, "oldstate"),
            tp_state_new: optional(&state, "newstate"),
            task_cgroups: self.offset("task_struct", &["cgroups"])?,
            css_set_dfl_cgrp: self.offset("css_set", &["dfl_cgrp"])?,
            cgroup_kn: self.offset("cgroup", &["kn"])?,
            kernfs_node_name: self.offset("kernfs_node", &["name"])?,
            task_comm: self.offset("task_struct", &["comm"])?,
        })
    }
}

/// The offset of a field in a tracepoint's format file.
pub fn format_field_offset(path: &Path, field: &str) -> Result<u32, OffsetError> {
    let text = std::fs::read_to_string(path).map_err(|source| OffsetError::Format {
        path: path.display().to_string(),
        source,
    })?;
    parse_format_offset(&text, field).ok_or_else(|| OffsetError::NoField {
        path: path.display().to_string(),
        field: field.into(),
    })
}

/// Finds `field:<decl> <field>;\toffset:N;` in a format file.
pub fn parse_format_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let off = line.split("offset:").nth(1)?.split(';').next()?;
        off.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The fork tracepoint's format as this kernel (6.18) prints it.
    const FORK_FORMAT: &str = "name: sched_process_fork
ID: 366
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
";

    #[test]
    fn format_offsets() {
        assert_eq!(parse_format_offset(FORK_FORMAT, "child_pid"), Some(20));
        assert_eq!(parse_format_offset(FORK_FORMAT, "parent_comm"), Some(8));
        assert_eq!(parse_format_offset(FORK_FORMAT, "pid"), None);
        let old = "\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;";
        assert_eq!(parse_format_offset(old, "child_comm"), Some(28));
    }

    #[test]
    fn resolves_this_kernels_sock_offsets() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            panic!("{VMLINUX_BTF} is missing: this kernel has no BTF, which sockact requires");
        }
        let btf = KernelBtf::open(path).unwrap();
        let state = btf.member("sock", &["__sk_common", "skc_state"]).unwrap();
        let num = btf.member("sock", &["__sk_common", "skc_num"]).unwrap();
        let backlog = btf.member("sock", &["sk_max_ack_backlog"]).unwrap();
        let ack = btf.member("sock", &["sk_ack_backlog"]).unwrap();
        // Facts of struct sock that hold on every kernel: the common part comes first, and the
        // two backlog counters are adjacent u32s.
        assert!(state.byte < 64 && num.byte < 64);
        assert_eq!(backlog.byte, ack.byte + 4);
        let reuse = btf
            .member("sock", &["__sk_common", "skc_reuseport"])
            .unwrap();
        assert_eq!(reuse.bitfield, Some(1));
        assert!(btf.member("sock", &["no_such_member"]).is_err());
    }

    #[test]
    fn finds_helpers_by_the_kernels_own_list() {
        let btf = KernelBtf::open(Path::new(VMLINUX_BTF)).unwrap();
        // As old as BPF itself, and never a helper.
        assert!(btf.has_enum_value("bpf_func_id", "BPF_FUNC_map_lookup_elem"));
        assert!(!btf.has_enum_value("bpf_func_id", "BPF_FUNC_no_such_helper"));
        assert!(!btf.has_enum_value("no_such_enum", "BPF_FUNC_map_lookup_elem"));
    }
}
