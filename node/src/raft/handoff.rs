//! Proposals and their answers cross between a client worker's runtime and the Raft
//! runtime in batches: one wake per runtime round each way, not one per write.
//!
//! A task woken from another thread costs its runtime an eventfd write (tokio's
//! current-thread scheduler unparks its driver on every remote wake, busy or not) and,
//! when that runtime sleeps, a thread switch. A write used to cross twice: the client
//! worker sent its proposal to the group's core, and the group's state machine worker
//! answered it back. Now a worker queues the proposals of one round in the Raft
//! runtime's [`Mailbox`] and wakes it once; the Raft runtime queues the answers of one
//! round in the worker's mailbox and wakes it once. Inside each runtime every
//! handover is a local wake.

use std::cell::RefCell;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::sync::{Notify, oneshot};

/// A queue that any thread posts to and one task, on the runtime that started it,
/// empties, woken once per round of the posting runtime.
pub struct Mailbox<T> {
    state: Mutex<MailboxState<T>>,
    notify: Notify,
}

struct MailboxState<T> {
    items: Vec<T>,
    /// A wake is on its way to the consumer: later posts ride on it.
    wake_pending: bool,
    /// The consumer is gone (its runtime shut down): posts are handed back.
    closed: bool,
}

impl<T: Send + 'static> Mailbox<T> {
    /// Starts the consumer on `runtime`: `consume` gets every batch, in posting order.
    pub fn start<F, Fut>(runtime: &Handle, mut consume: F) -> Arc<Self>
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let mailbox = Arc::new(Self {
            state: Mutex::new(MailboxState {
                items: Vec::new(),
                wake_pending: false,
                closed: false,
            }),
            notify: Notify::new(),
        });
        let consumer = CloseOnDrop(mailbox.clone());
        runtime.spawn(async move {
            let mailbox = &consumer.0;
            loop {
                mailbox.notify.notified().await;
                let batch = {
                    let mut state = mailbox.lock();
                    state.wake_pending = false;
                    std::mem::take(&mut state.items)
                };
                if !batch.is_empty() {
                    consume(batch).await;
                }
            }
        });
        mailbox
    }

    /// Queues `item` for the consumer, or hands it back if the consumer is gone.
    pub fn post(self: &Arc<Self>, item: T) -> Result<(), T> {
        let mut state = self.lock();
        if state.closed {
            return Err(item);
        }
        state.items.push(item);
        if state.wake_pending {
            return Ok(());
        }
        state.wake_pending = true;
        drop(state);
        // The wake leaves once the posting runtime has run the rest of its round, so
        // that whatever else that round posts goes with it. Dropped unrun (its runtime
        // shutting down), the task still wakes the consumer.
        match Handle::try_current() {
            Ok(runtime) => {
                let wake = WakeOnDrop(self.clone());
                runtime.spawn(async move {
                    tokio::task::yield_now().await;
                    drop(wake);
                });
            }
            Err(_) => self.notify.notify_one(),
        }
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct WakeOnDrop<T>(Arc<Mailbox<T>>);

impl<T> Drop for WakeOnDrop<T> {
    fn drop(&mut self) {
        self.0.notify.notify_one();
    }
}

/// Held by the consumer task: when its runtime drops it, the mailbox refuses posts
/// and drops what it holds (each answer's waiter then learns its answer is lost).
struct CloseOnDrop<T>(Arc<Mailbox<T>>);

impl<T> Drop for CloseOnDrop<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
            state.closed = true;
            std::mem::take(&mut state.items)
        };
        drop(items);
    }
}

/// An answer on its way to the runtime that waits for it.
pub type Delivery = Box<dyn FnOnce() + Send>;

thread_local! {
    /// This thread's inbox of answers, with the runtime its consumer runs on.
    static INBOX: RefCell<Option<(tokio::runtime::Id, Arc<Mailbox<Delivery>>)>> =
        const { RefCell::new(None) };
}

/// The inbox that answers to a caller on this thread's runtime go through, started on
/// first use (and again if that runtime has since been replaced).
pub fn local_inbox() -> Arc<Mailbox<Delivery>> {
    let runtime = Handle::current();
    INBOX.with(|inbox| {
        let mut inbox = inbox.borrow_mut();
        match &*inbox {
            Some((id, mailbox)) if *id == runtime.id() && !mailbox.is_closed() => mailbox.clone(),
            _ => {
                let mailbox = Mailbox::start(&runtime, |deliveries: Vec<Delivery>| {
                    for deliver in deliveries {
                        deliver();
                    }
                    std::future::ready(())
                });
                *inbox = Some((runtime.id(), mailbox.clone()));
                mailbox
            }
        }
    })
}

/// openraft's responder for client writes: the result travels back through the
/// waiting runtime's inbox. Dropped unanswered (the group stopped), its waiter sees
/// the channel close.
pub struct Answer<T> {
    reply: oneshot::Sender<T>,
    inbox: Arc<Mailbox<Delivery>>,
}

impl<T> Answer<T> {
    pub fn new(reply: oneshot::Sender<T>, inbox: Arc<Mailbox<Delivery>>) -> Self {
        Self { reply, inbox }
    }
}

impl<T: Send + 'static> openraft::raft::responder::Responder<super::TypeConfig, T> for Answer<T> {
    fn on_complete(self, result: T) {
        let reply = self.reply;
        let deliver: Delivery = Box::new(move || {
            let _ = reply.send(result);
        });
        if let Err(deliver) = self.inbox.post(deliver) {
            deliver();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_reach_the_consumer_in_order_across_runtimes() {
        let consumer_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (seen, mut received) = tokio::sync::mpsc::unbounded_channel();
        let mailbox = Mailbox::start(consumer_runtime.handle(), move |batch: Vec<u32>| {
            let seen = seen.clone();
            async move {
                for item in batch {
                    seen.send(item).unwrap();
                }
            }
        });
        let producer = std::thread::spawn({
            let mailbox = mailbox.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    for i in 0..1000 {
                        mailbox.post(i).unwrap();
                        if i % 7 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    // Let the last round's wake leave before the runtime goes.
                    tokio::task::yield_now().await;
                });
            }
        });
        producer.join().unwrap();
        let got: Vec<u32> = consumer_runtime.block_on(async {
            let mut got = Vec::new();
            while got.len() < 1000 {
                got.push(received.recv().await.unwrap());
            }
            got
        });
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_mailbox_whose_runtime_is_gone_hands_posts_back() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mailbox = Mailbox::start(runtime.handle(), |_: Vec<u32>| std::future::ready(()));
        drop(runtime);
        assert!(mailbox.is_closed());
        assert_eq!(mailbox.post(7), Err(7));
    }

    #[test]
    fn a_post_outside_any_runtime_wakes_the_consumer_at_once() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (seen, received) = oneshot::channel();
        let seen = Mutex::new(Some(seen));
        let mailbox = Mailbox::start(runtime.handle(), move |batch: Vec<u32>| {
            if let Some(seen) = seen.lock().unwrap().take() {
                let _ = seen.send(batch);
            }
            std::future::ready(())
        });
        mailbox.post(1).unwrap();
        mailbox.post(2).unwrap();
        assert_eq!(runtime.block_on(received).unwrap(), vec![1, 2]);
    }
}
