//! The VNI's network side: a TAP interface with virtio-net headers.
//!
//! Every frame read from or written to the TAP starts with a 10-byte
//! `virtio_net_hdr` (IFF_VNET_HDR). With checksum and TSO offloads on
//! (TUNSETOFFLOAD), the kernel hands over TCP segments of up to 64 KiB with
//! their checksum still to do, and accepts such frames back: one frame
//! crosses the region where a NIC would need forty-five. The header travels
//! with the frame through the region, so the receiving kernel finishes
//! what the sending one left; the receiving kernel also validates it, as
//! anything from the region is untrusted.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

use vni_protocol::{IoSlots, RxFrame};

/// Bytes of the virtio-net header in front of every frame.
pub const VNET_HDR_LEN: usize = 10;
/// Largest TSO segment the kernel may hand over (IP packet), so that with
/// the Ethernet and virtio-net headers a frame stays within 64 KiB.
pub const GSO_MAX_SIZE: usize = 65_000;

/// A TAP interface opened by this process.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Tap {
    /// Creates (or attaches to) TAP interface `name`, non-blocking, with
    /// virtio-net headers and checksum/TSO offloads.
    pub fn open(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {name:?} must have 1 to 15 bytes"),
            ));
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            let status = Command::new("modprobe").arg("tun").status()?;
            if !status.success() {
                return Err(io::Error::other(format!("modprobe tun: {status}")));
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) })?;
        // SAFETY: the kernel wrote a NUL-terminated name into ifr_name (it
        // is IFNAMSIZ long and zeroed beyond the name).
        let name = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let tap = Tap { file, name };
        let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        cvt(unsafe {
            libc::ioctl(
                tap.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(offloads),
            )
        })?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the carrier: up only while another node can be reached.
    pub fn set_carrier(&self, on: bool) -> io::Result<()> {
        let value: libc::c_int = on.into();
        // SAFETY: TUNSETCARRIER reads one int through the pointer.
        cvt(unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETCARRIER, &value) })?;
        Ok(())
    }

    /// Sets MAC address and MTU, adds `addresses` (CIDR) and brings the
    /// link up, with iproute2.
    pub fn configure(&self, mac: &str, mtu: u32, addresses: &[String]) -> io::Result<()> {
        let ip = |args: &[&str]| -> io::Result<()> {
            let out = Command::new("ip").args(args).output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        };
        let mtu = mtu.to_string();
        // A TSO frame with its Ethernet and virtio-net headers must fit the
        // protocol's 64 KiB: keep the kernel's segments a little smaller.
        let gso = GSO_MAX_SIZE.to_string();
        ip(&[
            "link",
            "set",
            "dev",
            &self.name,
            "address",
            mac,
            "mtu",
            &mtu,
            "gso_max_size",
            &gso,
        ])?;
        for address in addresses {
            ip(&["addr", "replace", address, "dev", &self.name])?;
        }
        ip(&["link", "set", "dev", &self.name, "up"])
    }

    /// Reads one frame (virtio-net header first) into `slots`, slot memory
    /// the endpoint lent for it: the kernel writes there, nothing here
    /// reads it. Returns 0 when no frame waits.
    pub fn read_into(&self, slots: &IoSlots<'_>) -> io::Result<usize> {
        let iov = slots.iovecs();
        let count = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `iov` is a valid array of `count` iovecs. Only the
        // endpoint builds an `IoSlots`, over slots this node holds (or a
        // buffer of its own), mapped and writable while `slots` is
        // borrowed, which outlasts the call; the kernel writes them as raw
        // memory, no Rust reference points there.
        let n = unsafe { libc::readv(self.file.as_raw_fd(), iov.as_ptr(), count) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            Ok(0)
        } else {
            Err(err)
        }
    }

    /// Writes one received frame (virtio-net header first) straight from
    /// its slots; `iov` is scratch space for the iovecs.
    pub fn write_frame(
        &self,
        frame: &RxFrame<'_>,
        iov: &mut Vec<libc::iovec>,
    ) -> io::Result<usize> {
        vni_protocol::frame_iovecs(frame, iov);
        let count = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `iov` is a valid array of `count` iovecs, made from the
        // frame's segments, which the core validated against the layout:
        // they lie inside the mapped region, which stays mapped while
        // `frame` lives (through this call). The kernel only reads them.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), count) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Whether a frame waits to be read (a poll that does not wait).
    pub fn readable(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `poll` is one valid pollfd that outlives the call.
        unsafe { libc::poll(&mut poll, 1, 0) == 1 }
    }

    /// The fd to poll.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}
