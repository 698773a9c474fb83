//! A faithful simulator of the Microsoft endpoints Palisade calls.
