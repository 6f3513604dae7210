package gguf

import (
	"errors"
	"fmt"
	"math"
)

// A Value is one metadata value. Data holds it as the Go type matching Type:
//
//	ValueUint8 uint8, ValueInt8 int8, ValueUint16 uint16, ValueInt16 int16,
//	ValueUint32 uint32, ValueInt32 int32, ValueFloat32 float32, ValueBool bool,
//	ValueString string, ValueUint64 uint64, ValueInt64 int64, ValueFloat64 float64
//
// For ValueArray, Elem is the element type and Data is a slice of the Go type
// matching Elem ([]uint32, []string, ...), or []Value when Elem is ValueArray.
type Value struct {
	Type ValueType
	Elem ValueType
	Data any
}

// A KV is one metadata key and its value.
type KV struct {
	Key   string
	Value Value
}

// Errors returned by the typed metadata accessors.
var (
	// ErrNoKey reports that a metadata key is absent.
	ErrNoKey = errors.New("metadata key not found")
	// ErrType reports that a metadata value does not have the type asked for.
	ErrType = errors.New("metadata value has another type")
)

// Len returns the number of elements of an array value, or 0 for a scalar.
func (v Value) Len() int {
	if v.Type != ValueArray {
		return 0
	}
	switch s := v.Data.(type) {
	case []uint8:
		return len(s)
	case []int8:
		return len(s)
	case []uint16:
		return len(s)
	case []int16:
		return len(s)
	case []uint32:
		return len(s)
	case []int32:
		return len(s)
	case []float32:
		return len(s)
	case []bool:
		return len(s)
	case []string:
		return len(s)
	case []uint64:
		return len(s)
	case []int64:
		return len(s)
	case []float64:
		return len(s)
	case []Value:
		return len(s)
	}
	return 0
}

// String formats v for people; long arrays are abbreviated.
func (v Value) String() string {
	if v.Type != ValueArray {
		if s, ok := v.Data.(string); ok {
			return fmt.Sprintf("%q", s)
		}
		return fmt.Sprint(v.Data)
	}
	const show = 6
	n := v.Len()
	if n <= show {
		return fmt.Sprintf("%v", v.Data)
	}
	head := v.slice(show)
	return fmt.Sprintf("[%s array of %d: %v ...]", v.Elem, n, head)
}

// slice returns the first n elements of an array value.
func (v Value) slice(n int) any {
	switch s := v.Data.(type) {
	case []uint8:
		return s[:n]
	case []int8:
		return s[:n]
	case []uint16:
		return s[:n]
	case []int16:
		return s[:n]
	case []uint32:
		return s[:n]
	case []int32:
		return s[:n]
	case []float32:
		return s[:n]
	case []bool:
		return s[:n]
	case []string:
		return s[:n]
	case []uint64:
		return s[:n]
	case []int64:
		return s[:n]
	case []float64:
		return s[:n]
	case []Value:
		return s[:n]
	}
	return nil
}

// check reports whether Data holds the Go type Type (and Elem) call for.
func (v Value) check() error {
	ok := false
	switch v.Type {
	case ValueUint8:
		_, ok = v.Data.(uint8)
	case ValueInt8:
		_, ok = v.Data.(int8)
	case ValueUint16:
		_, ok = v.Data.(uint16)
	case ValueInt16:
		_, ok = v.Data.(int16)
	case ValueUint32:
		_, ok = v.Data.(uint32)
	case ValueInt32:
		_, ok = v.Data.(int32)
	case ValueFloat32:
		_, ok = v.Data.(float32)
	case ValueBool:
		_, ok = v.Data.(bool)
	case ValueString:
		_, ok = v.Data.(string)
	case ValueUint64:
		_, ok = v.Data.(uint64)
	case ValueInt64:
		_, ok = v.Data.(int64)
	case ValueFloat64:
		_, ok = v.Data.(float64)
	case ValueArray:
		switch v.Elem {
		case ValueUint8:
			_, ok = v.Data.([]uint8)
		case ValueInt8:
			_, ok = v.Data.([]int8)
		case ValueUint16:
			_, ok = v.Data.([]uint16)
		case ValueInt16:
			_, ok = v.Data.([]int16)
		case ValueUint32:
			_, ok = v.Data.([]uint32)
		case ValueInt32:
			_, ok = v.Data.([]int32)
		case ValueFloat32:
			_, ok = v.Data.([]float32)
		case ValueBool:
			_, ok = v.Data.([]bool)
		case ValueString:
			_, ok = v.Data.([]string)
		case ValueUint64:
			_, ok = v.Data.([]uint64)
		case ValueInt64:
			_, ok = v.Data.([]int64)
		case ValueFloat64:
			_, ok = v.Data.([]float64)
		case ValueArray:
			var vs []Value
			vs, ok = v.Data.([]Value)
			for _, e := range vs {
				if e.Type != ValueArray {
					return fmt.Errorf("array of arrays holds a %s", e.Type)
				}
				if err := e.check(); err != nil {
					return err
				}
			}
		}
		if !ok {
			return fmt.Errorf("array of %s holds %T", v.Elem, v.Data)
		}
		return nil
	default:
		return fmt.Errorf("unknown value type %d", uint32(v.Type))
	}
	if !ok {
		return fmt.Errorf("%s value holds %T", v.Type, v.Data)
	}
	return nil
}

// asUint converts an integer value to uint64, failing for negative values and
// non-integers.
func (v Value) asUint() (uint64, bool) {
	switch x := v.Data.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	case int8:
		return uint64(x), x >= 0
	case int16:
		return uint64(x), x >= 0
	case int32:
		return uint64(x), x >= 0
	case int64:
		return uint64(x), x >= 0
	}
	return 0, false
}

// asInt converts an integer value to int64, failing for non-integers and
// values above math.MaxInt64.
func (v Value) asInt() (int64, bool) {
	switch x := v.Data.(type) {
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case uint64:
		return int64(x), x <= math.MaxInt64
	}
	return 0, false
}

// Value returns the metadata value stored under key.
func (f *File) Value(key string) (Value, bool) {
	i, ok := f.index[key]
	if !ok {
		return Value{}, false
	}
	return f.KV[i].Value, true
}

func (f *File) lookup(key string) (Value, error) {
	v, ok := f.Value(key)
	if !ok {
		return Value{}, fmt.Errorf("gguf: %q: %w", key, ErrNoKey)
	}
	return v, nil
}

func typeErr(key string, v Value, want string) error {
	got := v.Type.String()
	if v.Type == ValueArray {
		got = "array of " + v.Elem.String()
	}
	return fmt.Errorf("gguf: %q is %s, not %s: %w", key, got, want, ErrType)
}

// String returns the string value stored under key. The error wraps ErrNoKey
// if key is absent and ErrType if its value is not a string.
func (f *File) String(key string) (string, error) {
	v, err := f.lookup(key)
	if err != nil {
		return "", err
	}
	s, ok := v.Data.(string)
	if !ok {
		return "", typeErr(key, v, "string")
	}
	return s, nil
}

// Uint returns the value stored under key, which may have any integer type
// but must not be negative. The error wraps ErrNoKey if key is absent and
// ErrType otherwise.
func (f *File) Uint(key string) (uint64, error) {
	v, err := f.lookup(key)
	if err != nil {
		return 0, err
	}
	u, ok := v.asUint()
	if !ok {
		return 0, typeErr(key, v, "a non-negative integer")
	}
	return u, nil
}

// Int returns the value stored under key, which may have any integer type
// but must fit in an int64. The error wraps ErrNoKey if key is absent and
// ErrType otherwise.
func (f *File) Int(key string) (int64, error) {
	v, err := f.lookup(key)
	if err != nil {
		return 0, err
	}
	i, ok := v.asInt()
	if !ok {
		return 0, typeErr(key, v, "an integer")
	}
	return i, nil
}

// Float returns the float32 or float64 value stored under key. The error
// wraps ErrNoKey if key is absent and ErrType otherwise.
func (f *File) Float(key string) (float64, error) {
	v, err := f.lookup(key)
	if err != nil {
		return 0, err
	}
	switch x := v.Data.(type) {
	case float32:
		return float64(x), nil
	case float64:
		return x, nil
	}
	return 0, typeErr(key, v, "a float")
}

// Bool returns the bool value stored under key. The error wraps ErrNoKey if
// key is absent and ErrType otherwise.
func (f *File) Bool(key string) (bool, error) {
	v, err := f.lookup(key)
	if err != nil {
		return false, err
	}
	b, ok := v.Data.(bool)
	if !ok {
		return false, typeErr(key, v, "bool")
	}
	return b, nil
}

// Strings returns the array of strings stored under key. The slice is shared
// with f and must not be modified. The error wraps ErrNoKey if key is absent
// and ErrType otherwise.
func (f *File) Strings(key string) ([]string, error) {
	v, err := f.lookup(key)
	if err != nil {
		return nil, err
	}
	s, ok := v.Data.([]string)
	if !ok || v.Type != ValueArray {
		return nil, typeErr(key, v, "array of string")
	}
	return s, nil
}

// Int32s returns the array of int32 stored under key (such as token types).
// The slice is shared with f and must not be modified. The error wraps ErrNoKey
// if key is absent and ErrType otherwise.
func (f *File) Int32s(key string) ([]int32, error) {
	v, err := f.lookup(key)
	if err != nil {
		return nil, err
	}
	s, ok := v.Data.([]int32)
	if !ok || v.Type != ValueArray {
		return nil, typeErr(key, v, "array of int32")
	}
	return s, nil
}

// Float32s returns the array of float32 stored under key (such as token
// scores). The slice is shared with f and must not be modified. The error
// wraps ErrNoKey if key is absent and ErrType otherwise.
func (f *File) Float32s(key string) ([]float32, error) {
	v, err := f.lookup(key)
	if err != nil {
		return nil, err
	}
	s, ok := v.Data.([]float32)
	if !ok || v.Type != ValueArray {
		return nil, typeErr(key, v, "array of float32")
	}
	return s, nil
}
