//! Sending hand-made Ethernet frames out of an interface (AF_PACKET), for traffic that
//! ordinary sockets cannot produce: non-IP, truncated and malformed frames.
use std::io;

/// Sends `frame` out of `ifindex` in the calling thread's network namespace.
pub fn send_frame(ifindex: u32, frame: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_ll is a valid value; fields are filled below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
    // SAFETY: valid buffer and address for the duration of the call.
    let rc = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 { Err(err) } else { Ok(()) }
}
