//! Load for the loss-accounting tests: a server that reads each connection to EOF and closes,
//! and clients that connect and close as fast as they go.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

/// Transitions of one connection of this shape: client connects and closes; server reads to
/// EOF and closes. Client: CLOSE->SYN_SENT->ESTABLISHED->FIN_WAIT1->FIN_WAIT2->CLOSE; server:
/// LISTEN->SYN_RECV->ESTABLISHED->CLOSE_WAIT->LAST_ACK->CLOSE.
pub const PER_CONNECTION: usize = 10;

/// Serves `count` connections on `listener`: read to EOF, close.
pub fn serve(listener: TcpListener, count: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for _ in 0..count {
            let (mut conn, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            conn.read_to_end(&mut sink).unwrap();
        }
    })
}

/// `count` connections from `threads` threads, as fast as they go.
pub fn churn(addr: SocketAddr, count: usize, threads: usize) {
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let n = count / threads + usize::from(i < count % threads);
            thread::spawn(move || {
                for _ in 0..n {
                    drop(TcpStream::connect(addr).unwrap());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
