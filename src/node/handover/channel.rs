//! The hand-over's Unix socket: a `SOCK_SEQPACKET` pair, one end inherited by the new
//! process. Messages keep their boundaries; one larger than a packet (the embedded broker's
//! history) is cut into fragments and joined again. Descriptors ride on a message's first
//! fragment with `SCM_RIGHTS`.
//!
//! Both ends block, with a timeout: the hand-over runs on a thread of its own in the old
//! process and before the shards start in the new one, and a peer that stops answering is a
//! failed hand-over, not a hang.
//!
//! What a message may hold is bounded on receipt ([`Channel::max_message`]): nothing larger
//! is gathered, whatever the peer sends. The embedded broker's history, which can be larger
//! than any one message, travels in parts (see `handover/mod.rs`).

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::wire::{Malformed, Message, BATCH};

/// Payload bytes per packet: under the default socket buffer (about 208 KiB), so a packet
/// never waits for a larger buffer than the system gives.
const FRAGMENT: usize = 60 * 1024;
/// The largest message a channel accepts unless told otherwise: one connection whose queued
/// bytes are as large as they can be (`--client-buffer` allows 1 GiB, and a notice may queue
/// past it), with its record around them. The history never needs this much: it travels in
/// parts of about a mebibyte.
pub const MAX_MESSAGE: usize = (1 << 30) + (64 << 20);
/// A fragment's first byte: more fragments of this message follow.
const MORE: u8 = 1;

/// One end of the hand-over socket.
#[derive(Debug)]
pub struct Channel {
    socket: OwnedFd,
    /// The largest message [`Channel::recv`] gathers.
    max_message: usize,
}

impl Channel {
    /// A connected pair: (ours, theirs). Both are close-on-exec: the child gets a `dup` of
    /// its end (see `upgrade.rs`).
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors socketpair writes.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socketpair succeeded: both are new descriptors owned by nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Channel::new(a), Channel::new(b)))
    }

    /// Adopts an inherited descriptor, which must be a `SOCK_SEQPACKET` Unix socket.
    pub fn adopt(fd: OwnedFd) -> io::Result<Channel> {
        let socket = socket2::Socket::from(fd);
        if socket.r#type()? != socket2::Type::SEQPACKET {
            return Err(io::Error::other("not a hand-over socket"));
        }
        socket.set_cloexec(true)?;
        Ok(Channel::new(socket.into()))
    }

    fn new(socket: OwnedFd) -> Channel {
        Channel {
            socket,
            max_message: MAX_MESSAGE,
        }
    }

    /// Bounds the messages this end gathers to `bytes`: a longer one is refused without
    /// being gathered.
    pub fn with_max_message(mut self, bytes: usize) -> Channel {
        self.max_message = bytes;
        self
    }

    /// The largest message this end gathers.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Whether a message (or the peer's end of file) is waiting, without waiting for one.
    pub fn has_input(&self) -> io::Result<bool> {
        let mut poll = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd; a zero timeout only looks.
            let n = unsafe { libc::poll(&mut poll, 1, 0) };
            if n >= 0 {
                return Ok(n > 0 && poll.revents != 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The descriptor, for passing to a child.
    pub fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Gives up on a peer that sends or takes nothing for `timeout`.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        let socket = socket2::SockRef::from(&self.socket);
        socket.set_read_timeout(Some(timeout))?;
        socket.set_write_timeout(Some(timeout))
    }

    /// Sends `message`, with `fds` (at most [`BATCH`]) on its first fragment.
    pub fn send(&self, message: &Message, fds: &[RawFd]) -> io::Result<()> {
        self.send_bytes(&message.encode(), fds)
    }

    /// Sends a message already encoded (or bytes that claim to be one: tests play a broken
    /// peer with it), with `fds` (at most [`BATCH`]) on its first fragment.
    pub fn send_bytes(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        if fds.len() > BATCH {
            return Err(io::Error::other("too many descriptors for one message"));
        }
        let mut chunks = bytes.chunks(FRAGMENT).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let flag = if chunks.peek().is_some() { MORE } else { 0 };
            let fds = if first { fds } else { &[] };
            self.send_packet(flag, chunk, fds)?;
            first = false;
        }
        Ok(())
    }

    /// Receives one message and the descriptors that came with it. A message longer than
    /// [`Channel::max_message`] is refused as soon as it is.
    pub fn recv(&self) -> io::Result<(Message, Vec<OwnedFd>)> {
        let mut bytes = Vec::new();
        let mut fds = Vec::new();
        let mut packet = vec![0u8; FRAGMENT + 1];
        loop {
            let (n, more) = self.recv_packet(&mut packet, &mut fds)?;
            let len = bytes.len().saturating_add(n);
            if len > self.max_message {
                return Err(io::Error::other(format!(
                    "hand-over message larger than {} bytes",
                    self.max_message
                )));
            }
            if len > bytes.capacity() {
                // Doubling, but never past the bound: a message at the limit costs the limit.
                let want = bytes
                    .capacity()
                    .saturating_mul(2)
                    .clamp(len, self.max_message);
                bytes.reserve_exact(want - bytes.len());
            }
            bytes.extend_from_slice(packet.get(1..n + 1).unwrap_or_default());
            if !more {
                break;
            }
        }
        let message = Message::decode(&bytes).map_err(|Malformed(why)| io::Error::other(why))?;
        Ok((message, fds))
    }

    fn send_packet(&self, flag: u8, chunk: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let mut iov = [
            libc::iovec {
                iov_base: &flag as *const u8 as *mut libc::c_void,
                iov_len: 1,
            },
            libc::iovec {
                iov_base: chunk.as_ptr() as *mut libc::c_void,
                iov_len: chunk.len(),
            },
        ];
        let fd_bytes = mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
        let mut control = vec![0u8; if fds.is_empty() { 0 } else { space }];
        // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = control.len();
            // SAFETY: the control buffer is CMSG_SPACE(fd_bytes) long, so the first header
            // and its data fit; CMSG_DATA points inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr() as *const u8,
                    libc::CMSG_DATA(cmsg),
                    fd_bytes,
                );
            }
        }
        loop {
            // SAFETY: msg describes live buffers (see above).
            let n = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives one packet into `packet` (flag byte first); descriptors go to `fds`.
    /// Returns the payload length and whether more fragments follow.
    fn recv_packet(&self, packet: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<(usize, bool)> {
        let mut iov = libc::iovec {
            iov_base: packet.as_mut_ptr() as *mut libc::c_void,
            iov_len: packet.len(),
        };
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE((BATCH * mem::size_of::<RawFd>()) as u32) };
        let mut control = vec![0u8; space as usize];
        // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len();
        let n = loop {
            // SAFETY: msg describes live buffers.
            let n =
                unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // Take ownership of whatever descriptors arrived before judging the packet, so none
        // leaks on an error below.
        // SAFETY: msg's control buffer was filled by recvmsg; the CMSG macros walk it within
        // msg_controllen, and each SCM_RIGHTS payload holds descriptors now ours.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg);
                    let len = (*cmsg).cmsg_len - (data as usize - cmsg as usize);
                    for i in 0..len / mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other("hand-over descriptors were cut off"));
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(io::Error::other("hand-over packet larger than expected"));
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other process closed the hand-over",
            ));
        }
        let more = packet.first().is_some_and(|&flag| flag == MORE);
        Ok((n - 1, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::handover::wire::HistoryPart;
    use crate::wire::event_id::EventId;
    use bytes::Bytes;
    use std::io::{Read, Write};

    fn big(bytes: usize) -> Message {
        Message::History(HistoryPart {
            topics: vec![("t".into(), EventId::ZERO)],
            frames: vec![(EventId::local(9), 0, Bytes::from(vec![b'x'; bytes]))],
        })
    }

    #[test]
    fn a_message_larger_than_a_packet_arrives_whole() {
        let (a, b) = Channel::pair().unwrap();
        let sent = big(3 * FRAGMENT + 17);
        let writer = std::thread::spawn(move || a.send(&sent.clone(), &[]).map(|()| sent));
        let (got, fds) = b.recv().unwrap();
        assert_eq!(Some(got), writer.join().unwrap().ok());
        assert!(fds.is_empty());
    }

    #[test]
    fn a_message_over_the_limit_is_refused_and_not_gathered() {
        let (a, b) = Channel::pair().unwrap();
        let b = b.with_max_message(2 * FRAGMENT);
        let writer = std::thread::spawn(move || a.send(&big(3 * FRAGMENT), &[]));
        let err = b.recv().unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        drop(b);
        let _ = writer.join();
    }

    #[test]
    fn descriptors_arrive_with_their_message_and_work() {
        let (a, b) = Channel::pair().unwrap();
        let (mut left, right) = std::os::unix::net::UnixStream::pair().unwrap();
        a.send(&Message::End, &[right.as_raw_fd()]).unwrap();
        drop(right); // the copy in flight keeps it open
        let (message, mut fds) = b.recv().unwrap();
        assert_eq!(message, Message::End);
        assert_eq!(fds.len(), 1);
        let mut right = std::os::unix::net::UnixStream::from(fds.remove(0));
        left.write_all(b"hi").unwrap();
        let mut got = [0; 2];
        right.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn a_closed_peer_is_an_end_of_file() {
        let (a, b) = Channel::pair().unwrap();
        drop(a);
        let err = b.recv().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
