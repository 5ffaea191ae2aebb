//! Trigger kinds: how each fires. Webhook deliveries come in through the
//! server and [`crate::interpreter::event::delivery`]; polls and schedules
//! run a loop per recipe here.

pub mod poll;
pub mod schedule;
