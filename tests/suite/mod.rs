mod alerts;
mod check;
mod crash;
mod daemon;
mod drift;
mod ops;
mod redistill;
mod replay;
